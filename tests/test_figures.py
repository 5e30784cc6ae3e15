"""The figures (esawd.figures, experiments.figures) and the notebooks, on tiny evaluated runs."""

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_config, tiny_train, write_tiny_model
from trainer_driver import patch_reward

from esawd import analysis, figures
from experiments import figures as figures_cli

ROOT = Path(__file__).resolve().parents[1]
RUN_FIGURES = {f"{name}.png" for name in figures.FIGURES}
TABLE_FILES = {f"{name}.{ext}" for name in figures.TABLES for ext in ("md", "tex")}


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


# ---------------------------------------------------------------------------------------
# Paper-style runs written by hand: seven tasks, several models, ES, ES + AWD and GRPO.
# ---------------------------------------------------------------------------------------

PAPER_TASKS = ("countdown", "gsm8k", "proofwriter", "hellaswag", "piqa", "arc_challenge",
               "mmlu_pro")  # fmt: skip
ITERATIONS = (0, 25, 50)
# name -> (model name as config.json has it, target, method, awd lam, es seed)
PAPER_RUNS = {
    "qwen3b_cd_es_s0": ("qwen2.5-3b-instruct", "countdown", "es", 0.0, 0),
    "qwen3b_cd_es_s1": ("qwen2.5-3b-instruct", "countdown", "es", 0.0, 1),
    "qwen3b_cd_grpo": ("Qwen/Qwen2.5-3B-Instruct", "countdown", "grpo", 0.0, 0),
    "llama3b_cd_es": ("llama-3.2-3b-instruct", "countdown", "es", 0.0, 0),
    "llama3b_cd_grpo": ("/models/Llama-3.2-3B-Instruct", "countdown", "grpo", 0.0, 0),
    "qwen15b_pw_es": ("qwen2.5-1.5b-instruct", "proofwriter", "es", 0.0, 0),
    "qwen7b_pw_grpo": ("qwen2.5-7b-instruct", "proofwriter", "grpo", 0.0, 0),
    "qwen3b_gsm_awd": ("qwen2.5-3b-instruct", "gsm8k", "es", 150.0, 0),
    "qwen3b_gsm_grpo": ("qwen2.5-3b-instruct", "gsm8k", "grpo", 0.0, 0),
}
# The accuracies of llama3b_cd_es at iterations 0, 25, 50, for changes checked by hand.
LLAMA_ES = {
    "countdown": (0.10, 0.20, 0.30),  # +20.0 points
    "gsm8k": (0.50, 0.45, 0.375),  # -12.5
    "proofwriter": (0.40, 0.40, 0.45),  # +5.0
    "hellaswag": (0.60, 0.60, 0.60),  # +0.0
    "piqa": (0.70, 0.69, 0.65),  # -5.0
    "arc_challenge": (0.30, 0.31, 0.32),  # +2.0
    "mmlu_pro": (0.20, 0.20, 0.16),  # -4.0; prior mean (all but countdown) -14.5 / 6 = -2.4
}


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    """PAPER_RUNS as run directories: config.json as the trainer writes it (the tiny configs,
    model, task, method and AWD set) and forgetting.jsonl with all seven tasks at ITERATIONS.
    Returns {name: (workdir, {(task, iteration): accuracy})}."""
    root = tmp_path_factory.mktemp("paper_runs")
    rng = np.random.default_rng(7)
    out = {}
    for name, (model, target, method, lam, seed) in PAPER_RUNS.items():
        workdir = root / name
        workdir.mkdir()
        c = tiny_config(workdir, model, method=method)
        c.task.name = target
        if method == "es":
            c.es.population_size, c.es.seed = 30, seed
            c.awd.kind, c.awd.lam = ("l2", lam) if lam else ("none", 0.0)
        (workdir / "config.json").write_text(json.dumps(c.to_dict(), indent=2, sort_keys=True))
        acc = {}
        for task in PAPER_TASKS:
            vals = LLAMA_ES[task] if name == "llama3b_cd_es" else rng.integers(0, 65, 3) / 64
            acc |= {(task, t): float(v) for t, v in zip(ITERATIONS, vals, strict=True)}
        rows = [{"iteration": t, "task": task, "accuracy": a, "format_rate": 1.0, "reward": a,
                 "tokens": 10.0, "num_examples": 64} for (task, t), a in acc.items()]  # fmt: skip
        (workdir / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = (workdir, acc)
    return out


def change(acc, task):
    """Final minus initial accuracy in points, by hand from the fixture's rows."""
    return 100 * (acc[task, ITERATIONS[-1]] - acc[task, ITERATIONS[0]])


@pytest.mark.parametrize(
    "name, want",
    [
        ("qwen2.5-3b-instruct", ("Qwen2.5", "3B")),
        ("Qwen/Qwen2.5-1.5B-Instruct", ("Qwen2.5", "1.5B")),
        ("/models/Qwen2.5-7B-Instruct/", ("Qwen2.5", "7B")),
        ("llama-3.2-3b-instruct", ("Llama-3.2", "3B")),
        ("meta-llama/Llama-3.2-1B-Instruct", ("Llama-3.2", "1B")),
        ("smollm2-135m-instruct", ("SmolLM2", "135M")),
        ("runs/x/model", ("model", "")),
    ],
)
def test_model_family_and_size_from_the_model_name(name, want):
    assert figures.model_family_size(name) == want
    assert figures.model_label(name) == (f"{want[0]}-{want[1]}" if want[1] else want[0])


def test_prior_tasks_are_every_evaluated_task_but_the_target(paper_runs):
    workdir, acc = paper_runs["llama3b_cd_es"]
    (run,) = figures.load_runs([workdir])
    assert run.prior_tasks == [t for t in PAPER_TASKS if t != "countdown"]  # gsm8k, proofwriter too
    its, target, prior = run.target_and_prior()
    assert list(its) == list(ITERATIONS)
    np.testing.assert_allclose(target, LLAMA_ES["countdown"])
    want = [np.mean([acc[t, i] for t in PAPER_TASKS[1:]]) for i in ITERATIONS]
    np.testing.assert_allclose(prior, want)
    assert run.accuracy_change("gsm8k") == pytest.approx(-0.125)


def test_accuracy_change_table_is_final_minus_initial(paper_runs):
    runs = figures.load_runs([w for w, _ in paper_runs.values()])
    md = figures.accuracy_change_table(runs).splitlines()
    assert md[0] == (
        "| Run | Target | Countdown | GSM8K | ProofWriter | HellaSwag | PIQA | ARC-C | MMLU-Pro "
        "| Average |"
    )
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in md[2:]}
    # the two seeds are one row; the rest one row each
    assert len(md) - 2 == len(PAPER_RUNS) - 1
    cells = lambda key: [c.strip() for c in rows[key].strip("|").split("|")][2:]  # noqa: E731
    assert cells(("Llama-3.2-3B ES N=30", "Countdown")) == [
        "+20.0", "-12.5", "+5.0", "+0.0", "-5.0", "+2.0", "-4.0", "-2.4",
    ]  # fmt: skip
    # Two seeds: mean ± standard deviation (ddof 1) of each seed's change, by hand.
    seeds = [paper_runs[f"qwen3b_cd_es_s{i}"][1] for i in (0, 1)]
    for task, got in zip([*PAPER_TASKS, "average"], cells(("Qwen2.5-3B ES N=30", "Countdown")),
                         strict=True):  # fmt: skip
        if task == "average":
            vals = [np.mean([change(a, t) for t in PAPER_TASKS if t != "countdown"]) for a in seeds]
        else:
            vals = [change(a, task) for a in seeds]
        assert got == f"{np.mean(vals):+.1f} ± {np.std(vals, ddof=1):.1f}"
    # The GRPO run on a hub id is the same model's row label; its average excludes its target.
    _, acc = paper_runs["qwen7b_pw_grpo"]
    want = np.mean([change(acc, t) for t in PAPER_TASKS if t != "proofwriter"])
    assert cells(("Qwen2.5-7B GRPO", "ProofWriter"))[-1] == f"{want:+.1f}"
    assert ("Qwen2.5-3B ES+AWD L2 lam=150 N=30", "GSM8K") in rows

    tex = figures.accuracy_change_table(runs, fmt="latex").splitlines()
    assert tex[2] == r"\begin{tabular}{ll" + "r" * 8 + "}"
    assert tex[4] == (
        r"Run & Target & Countdown & GSM8K & ProofWriter & HellaSwag & PIQA & ARC-C & MMLU-Pro "
        r"& Average \\"
    )
    body = tex[tex.index(r"\midrule") + 1 : tex.index(r"\bottomrule")]
    assert [line.split(" & ")[0] for line in body] == [
        "Qwen2.5-3B ES N=30", "Qwen2.5-3B GRPO", "Llama-3.2-3B ES N=30", "Llama-3.2-3B GRPO",
        "Qwen2.5-1.5B ES N=30", "Qwen2.5-7B GRPO", "Qwen2.5-3B ES+AWD L2 lam=150 N=30",
        "Qwen2.5-3B GRPO",
    ]  # fmt: skip
    assert body[2] == (
        r"Llama-3.2-3B ES N=30 & Countdown & $+20.0$ & $-12.5$ & $+5.0$ & $+0.0$ & $-5.0$ & "
        r"$+2.0$ & $-4.0$ & $-2.4$ \\"
    )
    assert body[0].count("_{(") == 8  # two seeds: every cell has its standard deviation
    with pytest.raises(ValueError, match="fmt"):
        figures.accuracy_change_table(runs, fmt="html")


def test_influence_boxes_are_prior_task_changes_by_group(paper_runs):
    runs = figures.load_runs([w for w, _ in paper_runs.values()])
    panels = figures.influence_panels(runs)
    assert [p.title for p in panels] == [
        "Overall", "Target task", "Model family (3B)", "Model size (Qwen2.5)",
    ]  # fmt: skip
    assert [p.groups for p in panels] == [
        ["ES", "GRPO"], ["countdown", "gsm8k", "proofwriter"], ["Qwen2.5", "Llama-3.2"],
        ["1.5B", "3B", "7B"],
    ]  # fmt: skip

    def deltas(names):
        out = []
        for n in names:
            acc, target = paper_runs[n][1], PAPER_RUNS[n][1]
            out += [change(acc, t) for t in PAPER_TASKS if t != target]
        return sorted(out)

    es = ["qwen3b_cd_es_s0", "qwen3b_cd_es_s1", "llama3b_cd_es", "qwen15b_pw_es"]  # no AWD
    grpo = ["qwen3b_cd_grpo", "llama3b_cd_grpo", "qwen7b_pw_grpo", "qwen3b_gsm_grpo"]
    overall, target, family, size = panels
    np.testing.assert_allclose(sorted(overall.values["ES", "ES"]), deltas(es))
    np.testing.assert_allclose(sorted(overall.values["GRPO", "GRPO"]), deltas(grpo))
    assert ("gsm8k", "ES") not in target.values  # only ES + AWD trained on GSM8K
    np.testing.assert_allclose(sorted(target.values["proofwriter", "GRPO"]),
                               deltas(["qwen7b_pw_grpo"]))  # fmt: skip
    np.testing.assert_allclose(sorted(family.values["Llama-3.2", "ES"]), deltas(["llama3b_cd_es"]))
    np.testing.assert_allclose(
        sorted(family.values["Qwen2.5", "GRPO"]), deltas(["qwen3b_cd_grpo", "qwen3b_gsm_grpo"])
    )
    np.testing.assert_allclose(sorted(size.values["1.5B", "ES"]), deltas(["qwen15b_pw_es"]))
    assert ("7B", "ES") not in size.values

    fig = figures.plot_influence(runs)
    axes = fig.axes
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in axes] == [
        ["ES (N=30)", "GRPO"], ["Countdown", "GSM8K", "ProofWriter"], ["Qwen2.5", "Llama-3.2"],
        ["1.5B", "3B", "7B"],
    ]  # fmt: skip
    for ax, p in zip(axes, panels, strict=True):
        # one box per non-empty (group, method), ES left of GRPO in each group
        boxes = [b.get_gid() for b in ax.patches if b.get_gid()]
        want = [(g, m) for g in p.groups for m in ("ES", "GRPO") if (g, m) in p.values]
        assert boxes == [f"{g}/{m}" for g, m in want]
        medians = {line.get_gid(): line.get_ydata()[0] for line in ax.get_lines()
                   if line.get_gid()}  # fmt: skip
        for g, m in want:
            assert medians[f"{g}/{m} median"] == pytest.approx(np.median(p.values[g, m]))


def test_three_task_panels_show_target_vs_mean_prior(paper_runs):
    runs = figures.load_runs([w for w, _ in paper_runs.values()])
    fig = figures.plot_three_tasks(runs)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_ylabel() for ax in panels] == [
        "Countdown accuracy", "GSM8K accuracy", "ProofWriter accuracy",
    ]  # fmt: skip
    assert [len(ax.collections) for ax in panels] == [5, 2, 2]  # a scatter per run
    _, acc = paper_runs["llama3b_cd_es"]
    want = [[np.mean([acc[t, i] for t in PAPER_TASKS[1:]]), acc["countdown", i]]
            for i in ITERATIONS]  # fmt: skip
    offsets = [np.asarray(c.get_offsets()) for c in panels[0].collections]
    assert any(np.allclose(o, want) for o in offsets)
    (legend,) = fig.legends
    pairs = zip(legend.get_texts(), legend.legend_handles, strict=True)
    markers = {t.get_text(): h.get_marker() for t, h in pairs}
    assert len(markers) == 7 and len(set(markers.values())) == 7  # a marker per model and method
    assert markers["Qwen2.5-3B ES N=30"] == "o" and markers["Qwen2.5-3B GRPO"] == "X"


def test_write_figures_writes_the_new_figures_and_both_tables(paper_runs, tmp_path):
    workdirs = [w for w, _ in paper_runs.values()]
    names = ["influence", "three_tasks", "accuracy_change"]
    written = figures.write_figures(workdirs, tmp_path, names=names, log=lambda _: None)
    tables = {"accuracy_change.md", "accuracy_change.tex"}
    assert {p.name for p in written} == {"influence.png", "three_tasks.png"} | tables
    runs = figures.load_runs(workdirs)
    assert (tmp_path / "accuracy_change.tex").read_text() == figures.accuracy_change_table(
        runs, fmt="latex"
    )
    assert (tmp_path / "accuracy_change.md").read_text() == figures.accuracy_change_table(runs)


@pytest.mark.slow
def test_figures_command_writes_every_figure(runs, tmp_path, capsys):
    figures_cli.main(["--workdirs", *runs, "--out", str(tmp_path), "--no_toy"])
    written = {p.name for p in tmp_path.iterdir()}
    assert written == RUN_FIGURES | TABLE_FILES - {"seeds.md", "seeds.tex"}  # one seed per arm
    assert "skipped seeds: no arm has runs of several seeds" in capsys.readouterr().out
    for name in RUN_FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_figures_without_evaluation_are_skipped_with_the_reason(runs, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(runs[0], bare)
    analysis.clear_analysis(bare)
    written = figures.write_figures([bare], tmp_path / "out", toy=False)
    assert [p.name for p in written] == ["training_reward.png", "learning_curves.png"]
    out = capsys.readouterr().out
    assert "skipped target_vs_prior: no run has forgetting.jsonl" in out
    assert "skipped accuracy_change: no run has a task evaluated at two iterations" in out
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
def test_forgetting_notebook_executes(runs, paper_runs, tmp_path):
    out = tmp_path / "figs"
    workdirs = [*runs, *[str(w) for w, _ in paper_runs.values()]]
    nb = execute(
        ROOT / "notebooks" / "forgetting_figures.ipynb",
        f"WORKDIRS = {workdirs!r}\nOUT = {str(out)!r}\nEVALUATE = False",
        tmp_path,
    )
    assert {p.name for p in out.iterdir()} == RUN_FIGURES | TABLE_FILES
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in shown) == len(RUN_FIGURES)
    text = "".join(o.get("text", "") for o in shown)  # the LaTeX table is printed
    assert (out / "accuracy_change.tex").read_text() in text
    markdown = [o["data"]["text/markdown"] for o in shown if "text/markdown" in o.get("data", {})]
    assert (out / "accuracy_change.md").read_text() in markdown


@pytest.mark.slow
def test_toy_notebook_executes(tmp_path):
    out = tmp_path / "toy.png"
    execute(
        ROOT / "notebooks" / "toy_random_walk.ipynb",
        f"ITERATIONS = 20\nDIM = 200\nCONSTRAINED = 10\nOUT = {str(out)!r}",
        tmp_path,
    )
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_paired_changes_table_and_findings_figure(tmp_path, tiny_dir):
    """Per-example rows: each task's change paired example by example, Wilson intervals,
    Newcombe's interval and McNemar's p; a change is called only when its interval excludes 0."""
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.5  # the same 400 examples at t = 0 ...
    gained = base | (rng.random(400) < 0.2)  # ... most kept, about 10 % newly right
    noisy = base ^ (rng.random(400) < 0.02)  # a few flipped either way
    workdirs = []
    for name, after in (("up", gained), ("same", noisy)):
        workdir = tmp_path / name
        workdir.mkdir()
        c = tiny_config(workdir, tiny_dir)
        (workdir / "config.json").write_text(json.dumps(c.to_dict()))
        rows = [{"iteration": t, "task": "piqa", "accuracy": float(np.mean(x)),
                 "correct": x.astype(int).tolist(), "num_examples": 400}
                for t, x in ((0, base), (12, after))]  # fmt: skip
        (workdir / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        drift = {"iteration": 12, "frobenius": 1.0, "relative": 0.1, "per_module": {}}
        (workdir / analysis.DRIFT_FILE).write_text(json.dumps(drift) + "\n")
        workdirs.append(workdir)
    # the target from the trainer's own held-out evaluations (metrics.jsonl, eval/correct)
    held_out = [
        {"iteration": t, "eval/correct": c} for t, c in ((0, [0, 0, 1, 0]), (12, [1, 1, 1, 0]))
    ]
    (workdirs[0] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    runs = figures.load_runs(workdirs)
    up = analysis.stats.paired_difference(base, gained)
    assert up["lost"] == 0 and up["diff_ci"][0] > 0
    table = figures.paired_change_table(runs)
    lines = table.splitlines()
    assert runs[0].paired_tasks == ["countdown", "piqa"] and runs[1].paired_tasks == ["piqa"]
    assert lines[2].startswith(f"| {runs[0].label} | Countdown | 4 | 0→12 | 25.0 [")
    assert "+50.0 [" in lines[2] and not lines[2].split(" | ")[6].startswith(
        "**"
    )  # n=4: not called
    lines = [lines[0], lines[1], *lines[3:]]
    assert lines[2].split(" | ")[6].startswith(f"**{100 * up['diff']:+.1f} [")  # called
    assert not lines[3].split(" | ")[6].startswith("**")  # within noise: not called
    lo, hi = up["after_ci"]
    assert f"{100 * up['after']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in lines[2]
    assert f"{up['p_mcnemar']:.2g}" in lines[2] and f"+{up['gained']}/-0" in lines[2]
    names = ["findings", "paired_changes"]
    written = figures.write_figures(workdirs, tmp_path / "out", names=names, log=lambda _: None)
    assert {p.name for p in written} == {"findings.png", "paired_changes.md", "paired_changes.tex"}
    assert (tmp_path / "out" / "paired_changes.md").read_text() == table


def test_likelihood_scored_tasks_are_named_as_such():
    assert figures._nice("piqa:ll") == "PIQA (log-lik.)"
    assert figures._nice("arc_challenge:ll") == "ARC-Challenge (log-lik.)"
    assert figures._nice("piqa") == "PIQA"


def test_arm_comparison_pairs_runs_on_the_same_examples_at_their_last_evaluation(
    tmp_path, tiny_dir
):
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.4
    b = a | (rng.random(300) < 0.15)  # b gets about 9 % more right, loses none
    finals = {"a": (12, a), "b": (12, b), "c": (12, a[:200]), "d": (8, a)}
    workdirs = []
    for name, (last, final) in finals.items():
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(tiny_config(workdir, tiny_dir).to_dict()))
        base = np.zeros(len(final), bool)
        rows = [{"iteration": t, "task": "piqa:ll", "accuracy": float(np.mean(x)),
                 "correct": x.astype(int).tolist(), "num_examples": len(x)}
                for t, x in ((0, base), (last, final))]  # fmt: skip
        (workdir / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        workdirs.append(workdir)
    runs = figures.load_runs(workdirs)
    pairs = figures.arm_pairs(runs)
    # c has other examples, d ended at another iteration: only a and b compare
    assert [(x.workdir, y.workdir, t) for x, y, t, _ in pairs] == [
        (workdirs[0], workdirs[1], "piqa:ll")
    ]  # fmt: skip
    d = pairs[0][3]
    want = analysis.stats.paired_difference(a, b)
    assert d["diff"] == pytest.approx(want["diff"]) and d["diff"] > 0
    assert d["lost"] == 0 and d["iteration"] == 12
    (line,) = figures.arm_comparison_table(runs).splitlines()[2:]
    cells = line.strip("| ").split(" | ")
    assert cells[:5] == ["PIQA (log-lik.)", runs[0].label, runs[1].label, "300", "12"]
    assert cells[7].startswith(f"**{100 * want['diff']:+.1f} [")
    assert cells[8] == f"+{d['gained']}/-0"
    # examples changed from t=0: a's and b's flips compared paired
    flips = analysis.stats.paired_difference(a, b)  # from the all-wrong base: flips = right
    assert cells[10] == f"{100 * flips['before']:.1f} → {100 * flips['after']:.1f}"
    assert cells[11] == f"{d['changed']['p_mcnemar']:.2g}"
    latex = figures.arm_comparison_table(runs, "latex")
    assert "\\begin{tabular}{lllrrrrrrrrr}" in latex and "\\textbf{" in latex


def test_seeds_are_labelled_paired_within_and_set_side_by_side(tmp_path, tiny_dir):
    """Runs of one arm and several seeds: labels name the seed; the arm comparison pairs only
    runs of one seed (another seed draws other target examples); the seeds table sets each
    seed's paired change, drift and KL side by side with their mean and the seeds that call it."""
    rng = np.random.default_rng(2)
    base = rng.random(500) < 0.5
    lost = base & (rng.random(500) < 0.7)  # about 15 points lost: called
    kept = base ^ (rng.random(500) < 0.02)  # a few flipped either way: not called
    arms = {"x_s0": (4, 0, lost, 30.0), "x_s1": (4, 1, kept, 20.0), "y_s0": (16, 0, kept, 10.0)}
    workdirs = []
    for name, (n, seed, final, drift) in arms.items():
        workdir = tmp_path / name
        workdir.mkdir()
        c = tiny_config(workdir, tiny_dir)
        c.es.population_size, c.es.seed = n, seed
        (workdir / "config.json").write_text(json.dumps(c.to_dict()))
        rows = [{"iteration": t, "task": "piqa", "accuracy": float(np.mean(x)),
                 "correct": x.astype(int).tolist(), "num_examples": 500}
                for t, x in ((0, base), (12, final))]  # fmt: skip
        (workdir / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        held_out = [{"iteration": t, "eval/correct": [0, 0, 1, t > 0]} for t in (0, 12)]
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
        d = {"iteration": 12, "frobenius": drift, "relative": 0.1, "per_module": {}}
        (workdir / analysis.DRIFT_FILE).write_text(json.dumps(d) + "\n")
        kl = {"iteration": 12, "task": "piqa", "kl": drift / 1000}
        if seed == 1:  # a row that kept its per-prompt values: KL gets its bootstrap interval
            tokens = [10, 20, 30, 40]
            spread = zip(tokens, (0.5, 1.5, 1, 1), strict=True)
            kl |= {
                "prompt_sums": [drift / 1000 * k * f for k, f in spread],
                "prompt_tokens": tokens,
            }
        (workdir / analysis.KL_FILE).write_text(json.dumps(kl) + "\n")
        workdirs.append(workdir)
    runs = figures.load_runs(workdirs)
    x0, x1, y0 = runs
    assert x0.arm == x1.arm != y0.arm and (x0.seed, x1.seed, y0.seed) == (0, 1, 0)
    assert x0.label == f"{x0.arm} (seed 0)" and x1.label == f"{x0.arm} (seed 1)"
    assert y0.label == y0.arm  # no clash, no suffix
    # only x0 and y0 share a seed: x1's target examples are other ones
    assert {(a.workdir.name, b.workdir.name) for a, b, _, _ in figures.arm_pairs(runs)} == {
        ("x_s0", "y_s0")
    }
    assert figures.TABLES["seeds"][1](runs) and not figures.TABLES["seeds"][1]([x0, y0])
    table = figures.seed_table(runs)
    lines = table.splitlines()
    assert lines[0] == "| Arm | Measure | Seed 0 | Seed 1 | Mean | Called (+/-) |"
    row = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in lines[2:]}
    cells = row[(x0.arm, "PIQA: change (points)")].strip("| ").split(" | ")
    d0, d1 = (analysis.stats.paired_difference(base, f) for f in (lost, kept))
    assert d0["diff_ci"][1] < 0 and d1["diff_ci"][0] <= 0 <= d1["diff_ci"][1]
    assert cells[2].startswith(f"**{100 * d0['diff']:+.1f} [")  # called in seed 0
    assert cells[3].startswith(f"{100 * d1['diff']:+.1f} [")  # not in seed 1
    assert cells[4] == f"{50 * (d0['diff'] + d1['diff']):+.1f}"
    assert cells[5] == "+0/-1 of 2"
    changed = row[(x0.arm, "PIQA: changed (%)")].strip("| ").split(" | ")
    assert changed[2:4] == [f"{100 * d0['changed']:.1f}", f"{100 * d1['changed']:.1f}"]
    assert row[(x0.arm, "Drift")].strip("| ").split(" | ")[2:5] == ["30", "20", "25"]
    lo, hi = figures.load_runs(workdirs)[1].last_prior_kl_ci()
    assert lo < 0.02 < hi and x0.last_prior_kl_ci() is None  # x0's row kept no prompt values
    assert row[(x0.arm, "KL (nats/token)")].strip("| ").split(" | ")[2:5] == [
        "0.0300", f"0.0200 [{lo:.4f}, {hi:.4f}]", "0.0250"
    ]  # fmt: skip
    assert row[(y0.arm, "Drift")].strip("| ").split(" | ")[2:4] == ["10", "-"]
    # the target first in each arm, from the trainer's held-out evaluations
    assert lines[2].split(" | ")[1] == "Countdown: change (points)"
    assert "\\begin{tabular}{llrrrr}" in figures.seed_table(runs, "latex")
