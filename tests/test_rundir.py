"""esawd.rundir: files that are rewritten reach the disk before they replace the old ones."""

import os
import stat

import pytest

from esawd import rundir
from esawd.rundir import JsonlLog, RunDir


@pytest.fixture
def disk_events(monkeypatch):
    """Record os.fsync (inode, is a directory) and os.replace (names) calls, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def check_durable_replace(events, path):
    """The new file was fsynced, then renamed over `path`, then its directory fsynced."""
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"], events
    assert events[0] == ("fsync", path.stat().st_ino, False)  # the temporary, now at `path`
    assert events[1][2] == path.name
    assert events[2] == ("fsync", path.parent.stat().st_ino, True)


def test_truncate_after_fsyncs_the_new_file_before_replacing(tmp_path, disk_events):
    log = JsonlLog(tmp_path / "metrics.jsonl")
    for t in range(1, 5):
        log.append({"iteration": t, "reward": t / 10})
    disk_events.clear()
    log.truncate_after(2)
    assert [r["iteration"] for r in log.rows()] == [1, 2]
    check_durable_replace(disk_events, log.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_write_config_fsyncs_the_new_file_before_replacing(tmp_path, disk_events):
    run = RunDir(tmp_path / "run")
    disk_events.clear()
    run.write_config({"es": {"sigma": 0.001}})
    assert run.read_config() == {"es": {"sigma": 0.001}}
    check_durable_replace(disk_events, run.config_path)
    run.close()


def test_replace_file_survives_a_directory_that_refuses_fsync(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rundir.replace_file(tmp_path / "a.json", "{}\n")
    assert (tmp_path / "a.json").read_text() == "{}\n"
