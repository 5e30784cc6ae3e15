"""esawd.report: the end-of-run table and figure, from a run directory's files alone, and from
a tiny real run that logs drift and KL(base || tuned) on a task it is not trained on."""

import json

import pytest
import tiny_model
import trainer_driver

from esawd import report


def write_run(root, rows, *, method="es"):
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "method": method,
        "task": {"name": "rules"},
        "es": {"population_size": 4, "noise_rank": 4, "sigma": 1e-3, "alpha": 1e-3},
        "awd": {"kind": "l2", "lam": 10.0},
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_rows():
    before = [1] * 10 + [0] * 70
    after = [1] * 8 + [0] * 2 + [1] * 22 + [0] * 48  # 22 gained, 2 lost
    rows = [{"iteration": 0, "eval/accuracy": 10 / 80, "eval/num_examples": 80,
             "eval/correct": before, "drift/frobenius": 0.0, "drift/relative": 0.0,
             "kl/arithmetic": 0.0, "time/eval": 30.0}]  # fmt: skip
    for t in range(1, 7):
        rows.append({"iteration": t, "reward_mean": 0.1 * t, "reward_min": 0.0,
                     "reward_max": 0.2 * t, "drift_norm": float(t),
                     "time/iteration": 40.0})  # fmt: skip
    rows[-1] |= {"eval/accuracy": 30 / 80, "eval/num_examples": 80, "eval/correct": after,
                 "drift/frobenius": 6.0, "drift/relative": 3e-3, "kl/arithmetic": 2e-3,
                 "time/eval": 30.0}  # fmt: skip
    return rows


def test_summary_table_and_figure_from_the_files(tmp_path):
    root = tmp_path / "run"
    write_run(root, synthetic_rows())
    s = report.write_summary(root, machine="test machine")
    acc = s["accuracy"]
    assert (acc["n"], acc["gained"], acc["lost"]) == (80, 22, 2)
    assert acc["before"] == pytest.approx(0.125) and acc["after"] == pytest.approx(0.375)
    assert acc["diff_ci"][0] > 0  # a gain this size on 80 paired examples is not noise
    assert s["training_reward"] == {"first": pytest.approx(0.2), "last": pytest.approx(0.5),
                                    "window": 3}  # fmt: skip
    assert s["drift"] == {"frobenius": 6.0, "relative": 3e-3}
    assert s["kl"] == {"arithmetic": 2e-3}
    # 30 s first evaluation + 6 iterations of 40 s (the last one's evaluation inside it)
    assert s["seconds"]["training"] == pytest.approx(270.0)
    assert s["seconds"]["evaluation"] == pytest.approx(60.0)
    assert s["exported"] is None
    stored = json.loads((root / report.SUMMARY_FILE).read_text())
    assert stored["accuracy"]["gained"] == 22
    png = (root / report.FIGURE_FILE).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    table = report.format_summary(s)
    assert "12.5 %" in table and "37.5 %" in table
    assert "+25.0 points" in table and "excludes 0" in table
    assert "22 gained, 2 lost" in table and "KL(base || tuned) on arithmetic" in table
    assert "test machine" in table and "not exported" in table


def test_no_change_says_the_interval_includes_zero(tmp_path):
    rows = synthetic_rows()
    rows[-1]["eval/correct"] = rows[0]["eval/correct"]
    rows[-1]["eval/accuracy"] = rows[0]["eval/accuracy"]
    write_run(tmp_path, rows)
    table = report.format_summary(report.summarize(tmp_path))
    assert "+0.0 points" in table and "includes 0" in table


def test_summary_of_an_empty_run_is_a_clear_error(tmp_path):
    write_run(tmp_path, [])
    with pytest.raises(FileNotFoundError, match="has no rows yet"):
        report.summarize(tmp_path)


def test_a_tiny_run_logs_drift_kl_and_writes_its_summary(tmp_path, tiny_dir, capsys, monkeypatch):
    from esawd.tasks.countdown import Countdown

    monkeypatch.setattr(Countdown, "reward", trainer_driver.text_reward)  # members differ
    c = tiny_model.tiny_config(
        tmp_path / "run", tiny_dir,
        **{"eval.kl_task": "rules", "eval.kl_prompts": 2, "eval.kl_max_new_tokens": 4,
           "log.tensorboard": False},
    )  # fmt: skip
    tiny_model.tiny_train(c)
    root = tmp_path / "run"
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["iteration"] for r in evals] == [0, 1, 2]
    assert all(len(r["eval/correct"]) == 3 for r in evals)
    assert evals[0]["kl/rules"] == pytest.approx(0.0, abs=1e-6)  # theta_0 against itself
    assert evals[0]["drift/frobenius"] == 0.0
    assert evals[-1]["drift/frobenius"] > 0 and evals[-1]["kl/rules"] != 0.0
    # The last row's drift is the ES update's own ||theta_T - theta_0||.
    assert evals[-1]["drift/frobenius"] == pytest.approx(rows[-1]["drift_norm"], rel=1e-5)
    summary = json.loads((root / report.SUMMARY_FILE).read_text())
    assert summary["accuracy"]["n"] == 3
    assert summary["exported"] == str(root / "final")
    assert (root / report.FIGURE_FILE).exists()
    out = capsys.readouterr().out
    assert "held-out accuracy, t=0" in out and str(root / "final") in out


def test_kl_task_must_differ_from_the_target(tmp_path, tiny_dir, monkeypatch):
    c = tiny_model.tiny_config(tmp_path / "run", tiny_dir, **{"eval.kl_task": "countdown"})
    tiny_model.assert_refused_before_loading(
        c, "eval.kl_task='countdown'.*not trained on", monkeypatch
    )
    c = tiny_model.tiny_config(tmp_path / "run", tiny_dir, **{"eval.kl_task": "rulez"})
    tiny_model.assert_refused_before_loading(c, "eval.kl_task='rulez'.*arithmetic", monkeypatch)
