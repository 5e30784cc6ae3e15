"""Installing on a GPU: the `cuda12` extra, the notebooks' install cells and docs/gpu.md."""

import configparser
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import jax
import pytest
from packaging.requirements import Requirement  # a dependency of transformers and pip

from esawd import settings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["notebooks/forgetting_figures.ipynb", "notebooks/toy_random_walk.ipynb"]
GPU_DOC = ROOT / "docs" / "gpu.md"
# The keys docs/gpu.md exists to point at.
GPU_KEYS = ("es.model_axis", "grpo.model_axis", "checkpoint.async_save", "dry_run")


def extras() -> dict[str, list[Requirement]]:
    """setup.cfg's [options.extras_require], `file:` entries left out."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for name, value in cfg["options.extras_require"].items():
        lines = [x.strip() for x in value.splitlines() if x.strip()]
        if not any(x.startswith("file:") for x in lines):
            out[name] = [Requirement(x) for x in lines]
    return out


def requirement(name: str) -> Requirement:
    """The line of requirements.txt that names `name`."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and Requirement(line).name == name:
            return Requirement(line)
    raise AssertionError(f"requirements.txt has no {name} line")


def test_cuda12_extra_pins_jax_like_requirements():
    (req,) = extras()["cuda12"]
    assert (req.name, req.extras) == ("jax", {"cuda12"})
    assert req.specifier == requirement("jax").specifier


def install_cell(path: str) -> str:
    """The notebook's first code cell: the one that installs esawd."""
    nb = json.loads((ROOT / path).read_text(encoding="utf-8"))
    return next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_install_cell_installs_the_cuda12_extra(path):
    source = install_cell(path)
    assert "[cuda12]" in source and "ESAWD_SOURCE" in source
    assert 'find_spec("esawd") is None' in source  # skipped when esawd is importable
    python = "\n".join(x for x in source.splitlines() if not x.lstrip().startswith(("!", "%")))
    compile(python, path, "exec")


def test_install_cells_are_the_same():
    first, *rest = [install_cell(p) for p in NOTEBOOKS]
    assert all(cell == first for cell in rest)


@pytest.mark.parametrize(
    ("source", "gpu", "want"),
    [
        ("git+https://example.com/esawd", True, "esawd[cuda12] @ git+https://example.com/esawd"),
        ("git+https://example.com/esawd", False, "esawd @ git+https://example.com/esawd"),
        ("checkout", True, "esawd[cuda12] @ {checkout}"),  # a folder: its file:// URL
    ],
)
def test_install_cell_runs(source, gpu, want, monkeypatch, capsys, tmp_path):
    """Run the cell with esawd missing and pip faked: what it installs and what it warns."""
    monkeypatch.chdir(tmp_path)
    find_spec, which = importlib.util.find_spec, shutil.which
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "esawd" else find_spec(n, *a)
    )
    smi = "/usr/bin/nvidia-smi" if gpu else None
    monkeypatch.setattr(shutil, "which", lambda c, *a, **k: smi if c == "nvidia-smi" else which(c))
    monkeypatch.setattr(subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, 0))
    installed = []
    monkeypatch.setattr(subprocess, "check_call", lambda args, **k: installed.append(args))
    cell = install_cell(NOTEBOOKS[0]).replace('ESAWD_SOURCE = ""', f"ESAWD_SOURCE = {source!r}")
    exec(compile(cell, "install cell", "exec"), {})
    (args,) = installed
    assert args[1:5] == ["-m", "pip", "install", "-q"]
    assert args[-1] == want.format(checkout=(tmp_path / "checkout").resolve().as_uri())
    out, err = capsys.readouterr()
    assert str(jax.devices()) in out
    # The warning: a GPU (faked here), but JAX runs on the CPU.
    assert ("WARNING" in err) == (gpu and jax.default_backend() == "cpu")


def gpu_doc_keys() -> set[str]:
    """The config keys docs/gpu.md names: inline code `section.key` and --config.<key>= flags."""
    text = GPU_DOC.read_text()
    spans = " ".join(re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text))
    sections = "|".join(sorted({k.split(".")[0] for k in all_keys() if "." in k}))
    keys = set(re.findall(rf"(?<![\w.])((?:{sections})\.\w+)(?![\w.(])", spans))
    keys |= set(re.findall(r"--config\.([\w.]+)=", text))
    return keys | {k for k in GPU_KEYS if f"`{k}`" in text}


def all_keys() -> set[str]:
    """Every flattened config key of ES's and GRPO's settings, top-level keys included."""
    return {
        key
        for method in settings.METHODS
        for key in settings.flatten(settings.to_dict(settings.defaults(method)))
    }


def test_gpu_doc_names_real_config_keys():
    named = gpu_doc_keys()
    assert set(GPU_KEYS) <= named, f"docs/gpu.md does not document {set(GPU_KEYS) - named}"
    unknown = sorted(named - all_keys())
    assert not unknown, f"docs/gpu.md names keys esawd.settings does not have: {unknown}"


def test_gpu_doc_names_real_configs_extras_and_links():
    text = GPU_DOC.read_text()
    for name, arg in set(re.findall(r"configs/(\w+)\.py(?::([\w.]+))?", text)):
        assert (ROOT / "configs" / f"{name}.py").is_file(), name
        importlib.import_module(f"configs.{name}").get_config(arg or None)  # raises if unknown
    named = {e for group in re.findall(r"(?:\.|esawd)\[([\w,]+)\]", text) for e in group.split(",")}
    assert "cuda12" in named and named <= set(extras()) | {"test"}
    for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", text):
        doc = GPU_DOC.parent / target
        assert doc.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{target}#{anchor}"
