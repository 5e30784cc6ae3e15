"""The figures (esawd.figures, experiments.figures) and the notebooks, on tiny evaluated runs."""

from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_config, tiny_train, write_tiny_model
from trainer_driver import patch_reward

from esawd import analysis, figures
from experiments import figures as figures_cli

ROOT = Path(__file__).resolve().parents[1]
RUN_FIGURES = {f"{name}.png" for name in figures.FIGURES}


# Meant to keep the module on one pytest-xdist worker so its runs train once (not yet
# effective, docs/testing.md).
pytestmark = pytest.mark.xdist_group("figures")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny ES, ES + AWD and GRPO runs, each evaluated at every checkpoint."""
    from esawd.tasks.countdown import Countdown
    from esawd.tasks.gsm8k import GSM8K

    originals = Countdown.reward, GSM8K.load
    patch_reward()
    # GSM8K as the prior task, from four rows written here (no data directory needed).
    rows = [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
        for i in range(4)
    ]
    GSM8K.load = lambda self, split, data_dir=None, **kw: [
        self.from_row(r, index=i, split=split) for i, r in enumerate(rows)
    ]
    root = tmp_path_factory.mktemp("runs")
    model = write_tiny_model(root / "model")
    common = {"eval.num_examples": 0, "checkpoint.max_to_keep": None}
    configs = [
        tiny_config(root / "es", model, **common, **{"es.num_iterations": 3, "awd.kind": "none"}),
        tiny_config(root / "awd", model, **common, **{"es.num_iterations": 3, "awd.lam": 5.0}),
        tiny_config(root / "grpo", model, method="grpo", **common),
    ]
    settings = analysis.AnalysisSettings(
        tasks=("countdown", "gsm8k"), num_examples=4, max_new_tokens=4, batch_size=4,
        kl_prompts=3, kl_max_new_tokens=5,
    )  # fmt: skip
    for c in configs:
        tiny_train(c)
        analysis.analyze_run(c.workdir, settings, progress=False)
    Countdown.reward, GSM8K.load = originals
    return [c.workdir for c in configs]


@pytest.mark.slow
def test_figures_command_writes_every_figure(runs, tmp_path, capsys):
    figures_cli.main(["--workdirs", *runs, "--out", str(tmp_path), "--no_toy"])
    written = {p.name for p in tmp_path.iterdir()}
    assert written == RUN_FIGURES
    for name in written:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "wrote" in capsys.readouterr().out


def test_figures_without_evaluation_are_skipped_with_the_reason(runs, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(runs[0], bare)
    analysis.clear_analysis(bare)
    written = figures.write_figures([bare], tmp_path / "out", toy=False)
    assert [p.name for p in written] == ["training_reward.png", "learning_curves.png"]
    assert "skipped target_vs_prior: no run has forgetting.jsonl" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown figures"):
        figures_cli.main(["--workdirs", str(bare), "--out", str(tmp_path), "--only", "nope"])


def test_plots_show_the_rows_of_the_runs(runs):
    loaded = figures.load_runs(runs)
    assert [r.label for r in loaded] == ["ES N=4", "ES+AWD L2 lam=5 N=4", "GRPO"]
    es_run = loaded[0]
    # Mean prior accuracy by hand from forgetting.jsonl.
    table = {(r["iteration"], r["task"]): r["accuracy"] for r in es_run.forgetting}
    its, target, prior = es_run.target_and_prior()
    assert list(its) == [0, 1, 2, 3]
    np.testing.assert_allclose(target, [table[t, "countdown"] for t in its])
    np.testing.assert_allclose(prior, [table[t, "gsm8k"] for t in its])

    fig = figures.plot_weight_drift(loaded)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    for line, run in zip(lines, loaded, strict=True):
        rows = sorted(run.drift, key=lambda r: r["iteration"])
        np.testing.assert_allclose(line.get_ydata(), [r["frobenius"] for r in rows])

    fig = figures.plot_kl_heatmap(loaded)
    grid = fig.axes[0].get_images()[0].get_array()
    want = [[r["kl"] for r in run.kl if r["iteration"] == 3] for run in loaded[:2]]
    np.testing.assert_allclose(np.asarray(grid)[:2], want)

    table_md = figures.results_table(loaded)
    drift = es_run.last_drift()["relative"]
    assert "| ES N=4 | 0 → 3 |" in table_md and f"{drift:.2e}" in table_md


def execute(notebook: Path, parameters: str, cwd: Path):
    """Run a notebook with its `parameters` cell replaced; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = parameters
    resources = {"metadata": {"path": str(cwd)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    return nb


@pytest.mark.slow
def test_forgetting_notebook_executes(runs, tmp_path):
    out = tmp_path / "figs"
    nb = execute(
        ROOT / "notebooks" / "forgetting_figures.ipynb",
        f"WORKDIRS = {runs!r}\nOUT = {str(out)!r}\nEVALUATE = False",
        tmp_path,
    )
    assert {p.name for p in out.iterdir()} == RUN_FIGURES
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in shown) == len(RUN_FIGURES)


@pytest.mark.slow
def test_toy_notebook_executes(tmp_path):
    out = tmp_path / "toy.png"
    execute(
        ROOT / "notebooks" / "toy_random_walk.ipynb",
        f"ITERATIONS = 20\nDIM = 200\nCONSTRAINED = 10\nOUT = {str(out)!r}",
        tmp_path,
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
