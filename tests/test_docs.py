"""The Python examples shown in the README and the algorithm docs run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/algorithm.md"]


def python_blocks(path):
    text = (ROOT / path).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("path", DOCS)
def test_python_examples_run(path):
    blocks = python_blocks(path)
    assert blocks, f"{path} shows no Python example"
    for block in blocks:
        namespace = {}
        exec(compile(block, f"{path}:example", "exec"), namespace)
        assert "params" in namespace  # every example ends with updated parameters
