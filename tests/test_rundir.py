"""esawd.rundir: files that are rewritten reach the disk before they replace the old ones;
asynchronous checkpoints save what the arrays held at `save`, and count only once written."""

import asyncio
import os
import stat
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity  # where Orbax finalises a checkpoint

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


# ----- asynchronous checkpoints ------------------------------------------------------------


@pytest.fixture
def held_commits(monkeypatch):
    """Steps whose async checkpoint is kept from finalising (the rename of Orbax's temporary
    directory) until the test releases it: `held_commits["3"] = threading.Event()`."""
    held: dict[str, threading.Event] = {}
    real = atomicity.on_commit_callback

    async def on_commit_callback(tmp_dir, **kwargs):
        gate = held.get(tmp_dir.get_final().name)
        if gate is not None:
            assert await asyncio.to_thread(gate.wait, 60), "a held checkpoint was never released"
        await real(tmp_dir, **kwargs)

    # AsyncCheckpointer's background thread looks the callback up on the module at each save.
    monkeypatch.setattr(atomicity, "on_commit_callback", on_commit_callback)
    yield held
    for gate in held.values():  # a failed test leaves no thread waiting
        gate.set()


def release_later(gate: threading.Event, seconds: float = 0.2) -> None:
    threading.Timer(seconds, gate.set).start()


def make_params(t: int) -> dict:
    """Parameters of iteration t: prime-sized leaves, one sharded over every device."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    w = np.arange(8 * 5, dtype=np.float32).reshape(8, 5) / 7 + t
    return {
        "w": jax.device_put(w, rows),  # [8, 5], 8 divides 1, 4 and 8 devices
        "b": jnp.full((3,), t, jnp.bfloat16),
        "emb": {"table": jnp.arange(11 * 13, dtype=jnp.float32).reshape(11, 13) * t},
    }


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def assert_same(restored, saved):
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), want)


def test_async_saves_restore_exactly_what_was_saved(tmp_path):
    run = RunDir(tmp_path / "run", max_to_keep=None, async_save=True)
    saved = {}
    for t in (1, 2, 3):
        params = make_params(t)
        extra = {"opt": {"count": jnp.int32(10 * t), "mu": jnp.ones((7,), jnp.float32) / t}}
        saved[t] = (host(params), host(extra))
        run.save(t, params, {"iteration": t, "es_seed": 17}, extra=extra)
    assert run.latest_step() == 3
    assert run.all_steps() == [1, 2, 3]
    like, extra_like = make_params(0), {"opt": {"count": jnp.int32(0), "mu": jnp.zeros(7)}}
    for t in (1, 2, 3):
        params, meta, extra = run.restore(t, like, extra_like=extra_like)
        assert meta == {"iteration": t, "es_seed": 17}
        assert_same(params, saved[t][0])
        assert params["w"].sharding == like["w"].sharding
        assert_same(extra, saved[t][1])
    run.close()


def test_async_save_returns_before_the_write_and_reads_wait_for_it(tmp_path, held_commits):
    run = RunDir(tmp_path / "run", async_save=True)
    checkpoints = tmp_path / "run" / "checkpoints"
    run.save(1, make_params(1), {"iteration": 1})
    for t in (2, 3):
        held_commits[str(t)] = threading.Event()
    run.save(2, make_params(2), {"iteration": 2})
    assert not (checkpoints / "2").exists()  # save returned; the write goes on
    release_later(held_commits["2"])
    params, meta = run.restore(2, make_params(0))  # Orbax's restore waits for the write
    assert_same(params, host(make_params(2)))
    assert meta == {"iteration": 2}
    run.save(3, make_params(3), {"iteration": 3})
    assert not (checkpoints / "3").exists()
    release_later(held_commits["3"])
    assert run.latest_step() == 3  # the listing waits for the rename
    assert (checkpoints / "3").is_dir()
    assert run.all_steps() == [1, 2, 3]
    run.close()


def test_async_save_copies_the_arrays_before_the_caller_donates_them(tmp_path, held_commits):
    overwrite = jax.jit(lambda p: jax.tree.map(lambda x: x * 0 - 7, p), donate_argnums=0)
    run = RunDir(tmp_path / "run", async_save=True)
    params = make_params(5)
    before = host(params)
    held_commits["5"] = gate = threading.Event()
    run.save(5, params, {"iteration": 5})
    new = overwrite(params)  # as the ES update does with the state right after a save
    # A device (GPU) gives the buffers away; XLA:CPU keeps them while Orbax still holds a
    # zero-copy host view of them, and copies instead. Either way the write must not see -7.
    assert float(new["w"][0, 0]) == -7.0
    gate.set()
    restored, meta = run.restore(5, new)
    assert_same(restored, before)
    assert meta == {"iteration": 5}
    run.close()
    again = overwrite(new)  # with no save pending, `overwrite` does donate its argument
    assert all(x.is_deleted() for x in jax.tree.leaves(new)) and float(again["b"][0]) == -7.0


def test_close_finishes_every_pending_save(tmp_path, held_commits):
    run = RunDir(tmp_path / "run", async_save=True)
    run.save(1, make_params(1), {"iteration": 1})
    held_commits["2"] = gate = threading.Event()
    run.save(2, make_params(2), {"iteration": 2})
    assert not (tmp_path / "run" / "checkpoints" / "2").exists()
    release_later(gate)
    run.close()
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    fresh = RunDir(tmp_path / "run")
    assert fresh.all_steps() == [1, 2]
    for t in (1, 2):
        params, meta = fresh.restore(t, make_params(0))
        assert_same(params, host(make_params(t)))
        assert meta == {"iteration": t}
    fresh.close()


CRASH_MID_WRITE = """
import os, sys
sys.path[:0] = [{tests!r}]
import test_rundir
from orbax.checkpoint._src.path import atomicity
from esawd.rundir import RunDir

run = RunDir(sys.argv[1], async_save=True)
run.save(1, test_rundir.make_params(1), {{"iteration": 1}})
run.wait()

async def die(tmp_dir, **kwargs):  # the arrays are written; the process dies before the rename
    os._exit(3)

atomicity.on_commit_callback = die
run.save(2, test_rundir.make_params(2), {{"iteration": 2}})
run.wait()
"""


def test_a_checkpoint_cut_off_mid_write_is_never_listed(tmp_path):
    code = CRASH_MID_WRITE.format(tests=os.path.dirname(__file__))
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, timeout=300
    )
    assert child.returncode == 3, child.stderr.decode()[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("2*")) == ["2" + atomicity.TMP_DIR_SUFFIX]
    assert any((checkpoints / ("2" + atomicity.TMP_DIR_SUFFIX)).rglob("*"))  # data written
    run = RunDir(tmp_path / "run", async_save=True)
    assert run.latest_step() == 1 and run.all_steps() == [1]
    assert_same(run.restore(1, make_params(0))[0], host(make_params(1)))
    run.save(2, make_params(2), {"iteration": 2})  # the resumed run writes step 2 again
    assert run.latest_step() == 2
    assert_same(run.restore(2, make_params(0))[0], host(make_params(2)))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2"]
    run.close()


def test_a_failed_background_write_is_reported_and_not_listed(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run", async_save=True)
    run.save(1, make_params(1), {"iteration": 1})

    async def fail(tmp_dir, **kwargs):
        raise OSError(28, "No space left on device")

    run.wait()
    monkeypatch.setattr(atomicity, "on_commit_callback", fail)
    run.save(2, make_params(2), {"iteration": 2})
    with pytest.raises(OSError, match="No space left"):
        run.wait()
    assert run.latest_step() == 1
    run.close()
