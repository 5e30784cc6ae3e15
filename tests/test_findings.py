"""configs/findings.py (the three findings' arms) and experiments/findings.py (the runner)."""

import itertools
import json
from pathlib import Path

import pytest

from configs import findings
from esawd import analysis, figures, settings
from experiments import figures as figures_cli
from experiments import findings as runner


@pytest.mark.parametrize("arm", list(findings.ARMS))
def test_every_arm_is_a_valid_run_with_the_shared_design(arm):
    s = settings.from_config(findings.get_config(f"{arm}_s1"))
    settings.check(s)
    assert (s.model.name, s.task.name, s.task.num_train) == ("smollm2-135m-instruct", "rules", 16)
    if s.method == "es":
        method, n, rank, kind, lam = findings.ARMS[arm]
        assert (s.es.population_size, s.es.noise_rank, s.awd.kind) == (n, rank, kind)
        assert (s.es.num_iterations, s.es.sigma, s.es.alpha, s.es.seed) == (12, 1e-3, 2e-3, 1)
    else:  # GRPO's sampled completions match ES at N = 4: 4 members x 16 prompts x 12
        g = s.grpo
        assert g.prompts_per_step * g.group_size * g.num_steps == 4 * 16 * 12
        assert g.seed == 1


def test_awd_shrinks_the_walk_as_the_papers_does():
    _, _, _, _, lam = findings.ARMS["awd_n4"]
    c = 2e-3 * lam  # alpha * lam
    ratio = (1 - c) * ((1 - (1 - c) ** 24) / (12 * (1 - (1 - c) ** 2))) ** 0.5
    assert round(ratio, 2) == 0.46  # the docstring's claim; the paper's c=0.005, T=500: 0.44


def test_arm_names_and_seeds():
    assert findings.parse("es_n16_full_s3") == ("es_n16_full", 3)
    assert findings.parse("grpo") == ("grpo", 0)
    with pytest.raises(ValueError, match="es_n8 is not an arm"):
        findings.get_config("es_n8")


def test_base_rows_are_shared_only_between_equal_evaluations(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    wanted = {"num_examples": 8, "max_new_tokens": {"piqa": 8}}
    # a also evaluated another task: its piqa rows still match
    (a / "evaluate.json").write_text(json.dumps({**wanted, "max_new_tokens": {"piqa": 8, "x": 1}}))
    (c / "evaluate.json").write_text(json.dumps({**wanted, "num_examples": 9}))
    rows = [{"iteration": 0, "task": "piqa", "accuracy": 0.5, "correct": [1, 0]},
            {"iteration": 12, "task": "piqa", "accuracy": 1.0, "correct": [1, 1]}]  # fmt: skip
    for d in (a, c):
        (d / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runner.share_base_rows(b, [a, b, c], wanted) == 1  # a's base row; c's differ
    got = [json.loads(x) for x in (b / analysis.FORGETTING_FILE).read_text().splitlines()]
    assert got == rows[:1]
    assert runner.share_base_rows(b, [a, b, c], wanted) == 0  # already there


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "findings"


def test_the_committed_findings_figure_and_table_rebuild_from_the_committed_rows(tmp_path):
    """docs/results.md's findings table and figure come from the rows under
    docs/results/findings/ (no checkpoints) through `python -m experiments.figures`."""
    workdirs = [str(d) for d in runner.result_workdirs(RESULTS)]
    assert workdirs, f"{RESULTS} holds no run's rows"
    figures_cli.main(["--workdirs", *workdirs, "--out", str(tmp_path), "--no_toy",
                      "--only", ",".join(runner.OUTPUTS)])  # fmt: skip
    tables = [f"{name}.{ext}" for name in runner.OUTPUTS[1:] for ext in ("md", "tex")]
    for name in tables:
        assert (tmp_path / name).read_text() == (RESULTS / name).read_text(), name
    assert (tmp_path / "findings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table has a row per run and task pair evaluated twice, the target among them
    rows = (RESULTS / "paired_changes.md").read_text().splitlines()[2:]
    runs = figures.load_runs(workdirs)
    assert len(rows) == sum(len(r.paired_tasks) for r in runs)
    assert all(r.target in r.paired_tasks for r in runs)


def test_likelihood_base_rows_are_shared_when_their_example_counts_match(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    wanted = {"num_examples": 8, "max_new_tokens": {"piqa": 8}, "likelihood": {"piqa": 10}}
    (a / "evaluate.json").write_text(json.dumps({**wanted, "likelihood": {"piqa": 10, "x": 3}}))
    (c / "evaluate.json").write_text(json.dumps({**wanted, "likelihood": {"piqa": 11}}))
    rows = [{"iteration": 0, "task": "piqa:ll", "accuracy": 0.5, "correct": [1, 0]},
            {"iteration": 12, "task": "piqa:ll", "accuracy": 1.0, "correct": [1, 1]}]  # fmt: skip
    for d in (a, c):
        (d / analysis.FORGETTING_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runner.share_base_rows(b, [c, a, b], wanted) == 1  # a's; c scored 11 examples
    got = [json.loads(x) for x in (b / analysis.FORGETTING_FILE).read_text().splitlines()]
    assert got == rows[:1]


def test_the_findings_tables_in_results_md_are_rows_of_the_committed_tables():
    """Every row docs/results.md shows under a table header of paired_changes.md,
    arm_comparison.md or seeds.md is a row of that file: the numbers in the text come from
    the rows."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = doc[doc.index("## The three findings at CPU scale") :]
    section = section[: section.index("\n## ", 1)]
    checked = 0
    for name in ("paired_changes.md", "arm_comparison.md", "seeds.md"):
        table = (RESULTS / name).read_text().splitlines()
        header = table[0]
        assert header in section, f"docs/results.md shows no {name}"
        lines = section[section.index(header) :].splitlines()[2:]
        rows = [line for line in itertools.takewhile(lambda x: x.startswith("|"), lines)]
        assert rows and all(row in table for row in rows), name
        checked += len(rows)
    assert checked >= 10
