"""Continual fine-tuning (esawd.continual, awd.anchor): stages, the anchor a later stage is
pulled towards and measured against, and the summary's ACC / BWT / FWT."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_model
from tiny_model import assert_bitwise, leaves

from esawd import analysis, continual, models, settings
from esawd.analysis.thetas import Thetas
from esawd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _varied_reward(varied_reward):
    """Every test here runs with Countdown's reward varying with the text (conftest)."""


def test_parse_stages_and_its_errors():
    assert continual.parse_stages("rules:12, arithmetic:3:l1=0.01,countdown:1:none") == [
        continual.Stage("rules", 12),
        continual.Stage("arithmetic", 3, "l1", 0.01),
        continual.Stage("countdown", 1, "none", 0.0),
    ]
    for bad in ("rules", "rules:x", "rules:0", "rules:2:l3=1", "rules:2:l2=x", "rules:2:l2", ""):
        with pytest.raises(ValueError, match="task:iterations|names no stage"):
            continual.parse_stages(bad)


def test_cl_metrics_golden_values():
    # R[i][j]: accuracy on task j after stage i; base: before any stage.
    R = [[0.6, 0.2, 0.5], [0.4, 0.7, 0.45]]
    base = [0.3, 0.1, 0.5]
    m = continual.cl_metrics(R, base, num_stages=2)
    assert m["acc"] == pytest.approx((0.4 + 0.7) / 2)
    assert m["bwt"] == pytest.approx(0.4 - 0.6)  # task 0 after the last stage vs after its own
    assert m["fwt"] == pytest.approx(0.2 - 0.1)  # task 1 before its stage vs the base model
    one = continual.cl_metrics([[0.6]], [0.3], num_stages=1)
    assert one["acc"] == pytest.approx(0.6) and math.isnan(one["bwt"]) and math.isnan(one["fwt"])


def tiny_sequence_config(workdir, tiny_dir):
    c = tiny_model.tiny_config(workdir, tiny_dir, **{"eval.interval": 0, "eval.num_examples": 0})
    return c.to_dict()


@pytest.mark.slow
def test_two_stage_sequence_anchored_to_the_deployed_model(tmp_path, tiny_dir):
    c = tiny_sequence_config(tmp_path / "seq", tiny_dir)
    summary = continual.run_sequence(
        c, stages="countdown:2,arithmetic:2", anchor="deployed", eval_tasks=("rules",),
        eval_examples=3, eval_max_new_tokens=6,
    )  # fmt: skip
    seq = tmp_path / "seq"
    a, b = RunDir(seq / "stage0_countdown"), RunDir(seq / "stage1_arithmetic")
    # Stage B records its anchor (stage A's run directory) and starts from A's export.
    cfg_b = json.loads(b.config_path.read_text())
    assert cfg_b["awd"]["anchor"] == str(a.root)
    assert cfg_b["model"]["name"] == str(a.root / "final")
    assert b.has_start() and not a.has_start()
    deployed = models.load(tiny_dir).params
    theta_a = models.load(a.root / "final", tokenizer=False).params
    assert_bitwise(b.restore_anchor_numpy(deployed), deployed)  # theta_0: the deployed model
    assert_bitwise(b.restore_start_numpy(deployed), theta_a)
    # At B's iteration 0 the drift is already ||theta_A - theta_0||.
    pairs = zip(leaves(theta_a), leaves(deployed), strict=True)
    drift_a = math.sqrt(sum(float(np.sum((np.float64(x) - np.float64(y)) ** 2)) for x, y in pairs))
    assert drift_a > 0
    thetas = Thetas(b, jax.device_put(deployed), method="es", start=jax.device_put(theta_a))
    assert analysis.weight_drift(thetas.get(0), deployed)["frobenius"] == pytest.approx(drift_a)
    # B's theta_2 replayed from its start (not from theta_0) is what training had.
    final_b = b.restore(2, deployed)[0]
    thetas.steps = []  # force the replay
    assert_bitwise(thetas.get(2), final_b)
    rows = [json.loads(x) for x in (b.root / "weight_drift.jsonl").read_text().splitlines()]
    drift_rows = {r["iteration"]: r for r in rows}
    want = analysis.weight_drift(final_b, deployed)["frobenius"]
    assert drift_rows[2]["frobenius"] == pytest.approx(want)
    # The summary: R after each stage, the base model's accuracies, and the numbers.
    assert summary["tasks"] == ["countdown", "arithmetic", "rules"]
    assert len(summary["R"]) == 2 and all(len(r) == 3 for r in summary["R"])
    assert not any(math.isnan(x) for r in summary["R"] for x in r)
    assert summary["acc"] == pytest.approx((summary["R"][1][0] + summary["R"][1][1]) / 2)
    assert summary["bwt"] == pytest.approx(summary["R"][1][0] - summary["R"][0][0])
    assert summary["fwt"] == pytest.approx(summary["R"][0][1] - summary["base"][1])
    assert json.loads((tmp_path / "seq" / "continual.json").read_text())["R"] == summary["R"]
    table = continual.format_table([summary])
    assert "| countdown (base -> end) |" in table.splitlines()[0].replace("sequence | ", "| ")
    # Re-running resumes: nothing is trained again, the summary is the same.
    again = continual.run_sequence(
        c, stages="countdown:2,arithmetic:2", anchor="deployed", eval_tasks=("rules",),
        eval_examples=3, eval_max_new_tokens=6,
    )  # fmt: skip
    assert again["R"] == summary["R"]
    # The command line summarises finished sequences into a table and a figure.
    out = subprocess.run(
        [sys.executable, "-m", "experiments.continual", "--summary", str(tmp_path / "seq"),
         "--out", str(tmp_path / "fig")], cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ACC" in out.stdout and (tmp_path / "fig" / "continual.png").stat().st_size > 10_000


@pytest.mark.slow
def test_grpo_sequence_chains_its_stages(tmp_path, tiny_dir):
    no_eval = {"eval.interval": 0, "eval.num_examples": 0}
    c = tiny_model.tiny_config(tmp_path / "g", tiny_dir, method="grpo", **no_eval).to_dict()
    summary = continual.run_sequence(c, stages="countdown:1,arithmetic:1", anchor="previous",
                                     eval_examples=2, eval_max_new_tokens=4)  # fmt: skip
    b = RunDir(tmp_path / "g" / "stage1_arithmetic")
    cfg_b = json.loads(b.config_path.read_text())
    assert cfg_b["method"] == "grpo" and cfg_b["grpo"]["num_steps"] == 1
    assert cfg_b["model"]["name"] == str(tmp_path / "g" / "stage0_countdown" / "final")
    assert not b.has_start()  # GRPO's reference is the model each stage starts from
    theta_a = models.load(tmp_path / "g" / "stage0_countdown" / "final", tokenizer=False).params
    assert_bitwise(b.restore_anchor_numpy(theta_a), theta_a)
    assert len(summary["R"]) == 2 and summary["tasks"] == ["countdown", "arithmetic"]


def test_anchor_of_another_architecture_is_refused(tmp_path, tiny_dir, tiny_qwen2_dir):
    c = tiny_model.tiny_config(tmp_path / "x", tiny_dir, **{"awd.anchor": str(tiny_qwen2_dir)})
    with pytest.raises(settings.ConfigError, match="awd.anchor=.*does not have the parameters"):
        tiny_model.tiny_train(c)
    c = tiny_model.tiny_config(tmp_path / "y", tiny_dir, **{"awd.anchor": "no/such/dir/x"})
    with pytest.raises(settings.ConfigError, match="awd.anchor='no/such/dir/x' is invalid"):
        settings.check(settings.from_config(c))


def test_continual_configs_build():
    from configs import continual as cfg

    for arm in cfg.ARMS:
        c = cfg.get_config(arm)
        seq = c.continual
        stages = continual.parse_stages(seq.stages)
        assert [s.task for s in stages] == ["rules", "arithmetic"]
        d = c.to_dict()
        d.pop("continual")
        s = settings.from_config(d)
        settings.check(s)
        assert s.method == ("grpo" if arm == "grpo" else "es")
        if arm != "grpo":
            assert (s.awd.kind == "none") == (arm == "es")
        assert seq.anchor == ("deployed" if arm in ("es", "awd_deployed") else "previous")
    with pytest.raises(ValueError, match="not an arm"):
        cfg.get_config("sgd")
