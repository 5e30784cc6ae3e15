"""esawd.tasks without JAX: rewards, prompt rendering and data loading run in a process where
importing jax or flax fails (a reward worker, a data-prep script, a CPU-only grader)."""

import subprocess
import sys
import textwrap

# Runs in a fresh interpreter: sys.modules[name] = None makes `import name` raise ImportError.
CHILD = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path

    sys.modules["jax"] = None
    sys.modules["flax"] = None
    from esawd.tasks import TASK_NAMES, get_task

    countdown = get_task("countdown").generate(4, seed=0)
    CASES = {  # task: (example, correct completion, wrong completion)
        "countdown": (
            countdown[0],
            "</think>\\n<answer>" + countdown[0]["solution"] + "</answer>",
            "</think>\\n<answer>" + countdown[1]["solution"] + "</answer>",
        ),
        "gsm8k": ({"answer": "18"}, "9 + 9 = 18\\n#### 18", "#### 17"),
        "proofwriter": ({"answer": "True"}, "Answer: True", "Answer: False"),
        "hellaswag": ({"answer": "3"}, "3", "2"),
        "piqa": ({"answer": "1"}, "1", "2"),
        "arc_challenge": ({"answer": "C"}, "The answer is (C).", "The answer is (B)."),
        "mmlu_pro": ({"answer": "H"}, "The answer is (H).", "The answer is (A)."),
        "arithmetic": (get_task("arithmetic").generate(1, seed=0)[0], "", "#### -1"),
        "rules": (get_task("rules").generate(1, seed=0)[0], "", "Answer: Maybe"),
    }
    for name in ("arithmetic", "rules"):  # the right answer of a generated example
        example = CASES[name][0]
        right = ("#### " if name == "arithmetic" else "Answer: ") + example["answer"]
        CASES[name] = (example, right, CASES[name][2])
    assert sorted(CASES) == sorted(TASK_NAMES), (sorted(CASES), TASK_NAMES)
    scores = {}
    for name in TASK_NAMES:
        example, right, wrong = CASES[name]
        task = get_task(name)
        scores[name] = [
            task.reward(right, example)["answer_reward"],
            task.reward(wrong, example)["answer_reward"],
        ]
    # Prompt rendering and loading from a local data directory.
    messages = get_task("countdown").messages(countdown[0])
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "countdown").mkdir()
        rows = [{"nums": e["numbers"], "target": int(e["target"])} for e in countdown]
        (Path(root) / "countdown" / "countdown.json").write_text(json.dumps(rows))
        loaded = get_task("countdown").load("train", data_dir=root)
    jaxed = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax"))
    print(json.dumps({
        "scores": scores, "roles": [m["role"] for m in messages],
        "loaded": len(loaded), "jax_modules": [m for m in jaxed if sys.modules[m] is not None],
    }))
    """
)


def test_tasks_score_render_and_load_with_jax_and_flax_blocked():
    import json

    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["scores"] == {name: [1.0, 0.0] for name in out["scores"]}
    assert len(out["scores"]) == 9
    assert out["roles"] == ["system", "user", "assistant"]
    assert out["loaded"] == 4
    assert out["jax_modules"] == []
