"""Your own task (esawd.tasks.user, tasks.resolve_task): JSONL/parquet rows with a checker, an
import-path task from a module outside the package, the guard around user checkers, and both
kinds trained and evaluated from the command line on the tiny model."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import tiny_model

from esawd import analysis, settings, tasks
from esawd.rundir import read_jsonl
from esawd.tasks import user
from experiments import evaluate as evaluate_cli

ROOT = Path(__file__).resolve().parents[1]

# A module outside the package: an import-path task, a checker, and a hostile checker.
USER_MODULE = '''
import time

from esawd.tasks import Task


class Echo(Task):
    """Say the word back; procedural (no files), with a reward that varies with the text."""

    name = "echo"
    splits = ("train", "test")
    is_target = True
    procedural = True

    def generate(self, num_examples, *, seed, split="train"):
        start = 1000 * seed + (0 if split == "train" else 500)
        return [{"id": f"{split}-{i}", "answer": f"w{start + i}"} for i in range(num_examples)]

    def messages(self, example):
        return [{"role": "user", "content": f"Say {example['answer']}."}]

    def reward(self, completion, example):
        r = (sum(map(ord, completion)) % 101) / 100.0  # a tiny random model says no word
        return {"reward": r, "format_reward": 0.0, "answer_reward": r}


def make_task():
    return Echo()


class Plain:
    """The protocol without subclassing Task: load, messages, reward (a number)."""

    name = "plain"
    splits = ("test",)

    def load(self, split, data_dir=None):
        return [{"answer": "yes"}, {"answer": "no"}]

    def messages(self, example):
        return [{"role": "user", "content": "Yes or no?"}]

    def reward(self, completion, example):
        return float(completion.strip() == example["answer"])


def contains(completion, example):
    return 1.0 if str(example["answer"]) in completion else 0.0


CALLS = []


def raises(completion, example):
    CALLS.append(time.monotonic())
    raise RuntimeError("checker bug")


def sleeps(completion, example):
    CALLS.append(time.monotonic())
    time.sleep(10)
    return 1.0


def stubborn(completion, example):
    """Swallows the first interruption and sleeps again."""
    CALLS.append(time.monotonic())
    try:
        time.sleep(10)
    except BaseException:
        time.sleep(10)
    return 1.0


def hostile(completion, example):
    """Sleeps 10 s on its first call, raises on every later one."""
    CALLS.append(time.monotonic())
    if len(CALLS) == 1:
        time.sleep(10)
    raise ValueError("hostile")


def out_of_range(completion, example):
    return 2.0
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`usertask_mod` written to tmp_path and importable (sys.path and PYTHONPATH)."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / "usertask_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT)]))
    sys.modules.pop("usertask_mod", None)
    yield folder
    sys.modules.pop("usertask_mod", None)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


QA = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(12)]


def jsonl_task(path, **kw) -> user.JsonlTask:
    return tasks.resolve_task(tasks.TaskSpec("jsonl", path=str(path), **kw))


# ---------------------------------------------------------------------------------------
# Answer extraction and each checker on hand-made completions.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Let me think.\n<answer> 42 </answer>\nDone.", "42"),
        ("<answer>1</answer> no, <answer>2</answer>", "2"),
        ("<think>answer: 7</think>The answer is 8.", "8."),  # after the last </think>
        ("The answer is (C).\n\nHope this helps!", "(C)."),
        ("**Final answer:** Paris\nBye", "Paris"),
        ("Answer:\n  Rome\n", "Rome"),  # the marker alone on its line: the next line
        ("some work\n\n  last line here  \n\n", "last line here"),
        ("   \n", None),
    ],
)
def test_extract_answer(completion, expected):
    assert user.extract_answer(completion) == expected


CASES = [  # checker, truth, completion, answer_reward
    ("exact", "Paris", "It is in France.\nAnswer: paris.", 1.0),
    ("exact", "Paris", "<answer>**PARIS**</answer>", 1.0),
    ("exact", "New York", "The answer is new   york", 1.0),
    ("exact", "Paris", "Answer: Lyon", 0.0),
    ("exact", "Paris", "Paris is nice.\nBut the answer is Lyon", 0.0),
    ("exact", "Paris", "Answer:", 0.0),
    ("numeric", "1234.5", "so the total is $1,234.50", 1.0),
    ("numeric", 0.5, "<answer>1/2</answer>", 1.0),
    ("numeric", "-3", "x = 4 - 7 = -3", 1.0),
    ("numeric", "100", "100.00001", 1.0),  # within 1e-6 * 100
    ("numeric", "100", "100.001", 0.0),
    ("numeric", "0", "0.0000005", 1.0),  # |truth| < 1: absolute
    ("numeric:1e-3", "100", "100.05", 1.0),
    ("numeric:1e-3", "100", "100.2", 0.0),
    ("numeric", "42", "no number here", 0.0),
    ("choice", "C", "The answer is (C).", 1.0),
    ("choice", "c", "Thinking about A and B...\nAnswer: c", 1.0),
    ("choice", "B", "I pick B, not a trick", 1.0),  # the article 'a' is no choice
    ("choice", "B", "The answer is (D).", 0.0),
    ("choice", "J", "<answer>J</answer>", 1.0),
    (r"regex:#### (\d+)", "17", "work\n#### 12\nno wait\n#### 17\nok", 1.0),
    (r"regex:#### (\d+)", "12", "work\n#### 12\nno wait\n#### 17\nok", 0.0),
    (r"regex:yes|no", "No", "maybe... no", 1.0),  # no group: the whole last match
    (r"regex:(\d+) apples", "3", "no apples", 0.0),
    ("usertask_mod:contains", "blue", "the sky is blue", 1.0),
    ("usertask_mod:contains", "blue", "the sky is grey", 0.0),
]


@pytest.mark.parametrize("checker, truth, completion, expected", CASES)
def test_each_checker(user_module, tmp_path, checker, truth, completion, expected):
    path = write_jsonl(tmp_path / "d" / "test.jsonl", [{"prompt": "q", "answer": truth}])
    task = jsonl_task(path.parent, checker=checker)
    (example,) = task.load("test")
    r = task.reward(completion, example)
    assert r["answer_reward"] == expected
    assert r["reward"] == expected  # reward = the checker's score; format has weight 0
    assert task.guard.failures == 0


def test_format_reward_is_the_answer_tag_after_thinking(tmp_path):
    task = jsonl_task(write_jsonl(tmp_path / "a.jsonl", QA))
    example = {"answer": "4"}
    assert task.reward("<answer>4</answer>", example)["format_reward"] == 1.0
    assert task.reward("Answer: 4", example)["format_reward"] == 0.0
    assert task.reward("<answer>4</answer></think>4", example)["format_reward"] == 0.0
    assert task.reward("x" * 70_000 + "<answer>4</answer>", example) == user.zero_reward()


# ---------------------------------------------------------------------------------------
# Data: files, splits, prompts, and bad rows.
# ---------------------------------------------------------------------------------------


def test_a_single_file_is_split_by_row_hash_disjoint_and_stable(tmp_path):
    rows = [{"prompt": f"Question {i}?", "answer": str(i)} for i in range(200)]
    task = jsonl_task(write_jsonl(tmp_path / "all.jsonl", rows))
    assert task.splits == ("train", "test")
    train, test = task.load("train"), task.load("test")
    assert sorted(e["prompt"] for e in train + test) == sorted(r["prompt"] for r in rows)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert 25 <= len(test) <= 75  # a quarter of 200, by hash
    moved = jsonl_task(write_jsonl(tmp_path / "moved.jsonl", rows[::-1] + [rows[0]]))
    assert {e["prompt"] for e in moved.load("test")} == {e["prompt"] for e in test}


def test_a_folder_of_parquet_and_jsonl_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "qa"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(QA[:8]), folder / "train.parquet")
    write_jsonl(folder / "test.jsonl", QA[8:])
    task = jsonl_task(folder, checker="numeric", template="Q: {question}")
    assert task.splits == ("train", "test")
    assert [e["answer"] for e in task.load("train")] == [r["answer"] for r in QA[:8]]
    assert [e["answer"] for e in task.load("test")] == [r["answer"] for r in QA[8:]]
    with pytest.raises(ValueError, match="no split 'validation'"):
        task.load("validation")


def test_messages_prompt_messages_template_system_and_prefill(tmp_path):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", [
        {"prompt": "What is 2 + 2?", "answer": "4"},
        {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}],
         "answer": "x"},
        {"question": "3 + 3", "answer": 6},
    ])  # fmt: skip
    task = jsonl_task(path.parent, template="Q: {question}", system_prompt="Be brief.",
                      prefill="<answer>")  # fmt: skip
    a, b, c = (task.messages(e) for e in task.load("train"))
    assert a == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<answer>"},
    ]
    assert b[:2] == [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}]
    assert c[1] == {"role": "user", "content": "Q: 3 + 3"}
    plain = jsonl_task(path.parent)  # no template: the third row is refused
    with pytest.raises(tasks.TaskDataError, match="row 3: no 'prompt'"):
        plain.load("train")
    assert plain.messages({"prompt": "What is 2 + 2?", "answer": "4"}) == [
        {"role": "user", "content": "What is 2 + 2?"}
    ]


BAD_ROWS = [  # rows, task keys, the error
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "b"}'], {},
     r"train.jsonl row 2: no 'answer' \(rows need 'answer' and 'prompt' or 'messages'\)"),
    (['{"prompt": "a", "answer": "1"}', "", '{"answer": "2"}'], {},
     r"train.jsonl row 3: no 'prompt' or 'messages'"),
    (['{"prompt": "a", "answer": "1"', ], {}, r"train.jsonl row 1: not valid JSON"),
    (['["a", "b"]'], {}, r"train.jsonl row 1: expected a JSON object, got list"),
    (['{"q": "a", "answer": "1"}'], {"template": "Q: {question}"},
     r"train.jsonl row 1: task.template uses the field 'question', which the row lacks"),
    (['{"prompt": "a", "answer": " "}'], {}, r"train.jsonl row 1: 'answer' is empty"),
    (['{"c": ["x"], "answer": "1"}'], {"template": "Pick {c[1]}"},
     r"train.jsonl row 1: task.template cannot be filled from the row \(IndexError"),
    (['{"prompt": "a", "answer": "seven"}'], {"checker": "numeric"},
     r"train.jsonl row 1: 'answer' 'seven' is not a number"),
    (['{"prompt": "a", "answer": "K"}'], {"checker": "choice"},
     r"train.jsonl row 1: 'answer' 'K' is not one letter A-J"),
    (['{"messages": [{"role": "robot", "content": "x"}], "answer": "1"}'], {},
     r"train.jsonl row 1: 'messages' must be a non-empty list"),
    (['{"prompt": [{"role": "user", "content": "x"}], "answer": "1"}'], {},
     r"train.jsonl row 1: 'prompt' must be non-empty text"),
]  # fmt: skip


@pytest.mark.parametrize("lines, keys, error", BAD_ROWS)
def test_bad_rows_name_the_file_the_row_and_the_field(tmp_path, lines, keys, error):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", lines)
    with pytest.raises(tasks.TaskDataError, match=error):
        jsonl_task(path.parent, **keys).load("train")


def test_bad_task_settings_are_refused_naming_the_key(tmp_path):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", QA)
    s = settings.defaults()

    def check(**task):
        import dataclasses

        bad = dataclasses.replace(s, workdir=str(tmp_path / "w"),
                                  task=dataclasses.replace(s.task, **task))  # fmt: skip
        with pytest.raises(settings.ConfigError) as err:
            settings.check(bad)
        return str(err.value)

    assert check(name="jsonl").startswith("task.path='' is invalid")
    assert "no such file or folder" in check(name="jsonl", path=str(tmp_path / "nope"))
    assert check(name="jsonl", path=str(path), checker="numeric:x").startswith("task.checker=")
    assert check(name="jsonl", path=str(path), checker="nomodule:f").startswith("task.checker=")
    assert check(name="jsonl", path=str(path), template="{0}").startswith("task.template=")
    assert check(name="gsm8k", prefill="x").startswith("task.prefill='x' is invalid")
    assert "'jsonl' with a path" in check(name="nope")


def test_bad_rows_are_refused_before_the_model_loads(tmp_path, tiny_dir, monkeypatch):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", QA[:3] + [{"prompt": "x"}])
    write_jsonl(tmp_path / "d" / "test.jsonl", QA[3:])
    keys = {"task.name": "jsonl", "task.path": str(path.parent), "task.template": "{question}"}
    c = tiny_model.tiny_config(tmp_path / "run", tiny_dir, **keys)
    tiny_model.assert_refused_before_loading(
        c, r"train.jsonl row 4: no 'answer' \(rows need", monkeypatch
    )


# ---------------------------------------------------------------------------------------
# The guard: a checker that raises or runs long scores 0, reported once.
# ---------------------------------------------------------------------------------------


def run_checker(task, completions):
    example = task.load("test")[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        rewards = [task.reward(c, example)["reward"] for c in completions]
        seconds = time.monotonic() - t0
    reported = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    return rewards, seconds, reported


def one_row_task(tmp_path, checker):
    path = write_jsonl(tmp_path / "d" / "test.jsonl", [{"prompt": "q", "answer": "1"}])
    return jsonl_task(path.parent, checker=checker)


def test_a_raising_checker_scores_zero_and_is_reported_once(user_module, tmp_path):
    task = one_row_task(tmp_path, "usertask_mod:raises")
    rewards, _, reported = run_checker(task, ["a", "b", "c"])
    assert rewards == [0.0, 0.0, 0.0]
    assert len(reported) == 1 and "RuntimeError: checker bug" in str(reported[0].message)
    assert task.guard.failures == 3
    task = one_row_task(tmp_path, "usertask_mod:out_of_range")
    rewards, _, reported = run_checker(task, ["a", "b"])
    assert rewards == [0.0, 0.0] and "outside [0, 1]" in str(reported[0].message)


@pytest.mark.parametrize("checker", ["sleeps", "stubborn"])
def test_a_sleeping_checker_is_cut_off_after_a_second(user_module, tmp_path, checker):
    task = one_row_task(tmp_path, f"usertask_mod:{checker}")
    rewards, seconds, reported = run_checker(task, ["a", "b"])
    assert rewards == [0.0, 0.0]
    assert seconds < 2 * user.CHECKER_TIMEOUT_SECONDS + 1.5  # not 2 x 10 s
    assert len(reported) == 1 and "TimeoutError" in str(reported[0].message)


def test_the_timer_of_a_caller_survives_the_guard():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        assert user.call_with_timeout(lambda: 7, seconds=1.0) == 7
        with pytest.raises(TimeoutError):
            user.call_with_timeout(time.sleep, 3, seconds=0.2)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.5 < left < 1.5  # still armed, less the time spent
        time.sleep(left + 0.2)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_the_guard_uses_a_worker_thread(user_module, tmp_path):
    task = one_row_task(tmp_path, "usertask_mod:sleeps")
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=run_checker(task, ["a"])))
    worker.start()
    worker.join(8)
    rewards, seconds, reported = out["r"]
    assert rewards == [0.0] and seconds < 3 and len(reported) == 1


# ---------------------------------------------------------------------------------------
# Import-path tasks.
# ---------------------------------------------------------------------------------------


def test_an_import_path_task_from_a_module_outside_the_package(user_module):
    task = tasks.resolve_task("usertask_mod:make_task")
    assert isinstance(task, tasks.ImportedTask) and task.is_target and task.name == "echo"
    assert task.generated("") and task.generate(2, seed=0, split="test")[0]["answer"] == "w500"
    example = task.generate(1, seed=0)[0]
    assert task.messages(example) == [{"role": "user", "content": "Say w0."}]
    assert set(task.reward("abc", example)) == {"reward", "format_reward", "answer_reward"}
    assert tasks.resolve_task("usertask_mod:Echo").name == "echo"  # a class is called too

    plain = tasks.resolve_task("usertask_mod:Plain")  # the protocol without subclassing
    assert not plain.is_target and not plain.generated("")
    examples = plain.load("test")
    assert plain.reward(" yes ", examples[0]) == {
        "reward": 1.0, "format_reward": 0.0, "answer_reward": 1.0
    }  # fmt: skip
    with pytest.raises(tasks.TaskSpecError, match="lacks name, splits, messages, reward"):
        tasks.resolve_task("usertask_mod:CALLS")
    with pytest.raises(tasks.TaskSpecError, match="has no 'nothing'"):
        tasks.resolve_task("usertask_mod:nothing")
    with pytest.raises(tasks.TaskSpecError, match="cannot import 'no_such_mod'"):
        tasks.resolve_task("no_such_mod:task")


def test_a_prior_task_cannot_be_trained_on(user_module, tmp_path):
    s = settings.defaults()
    import dataclasses

    bad = dataclasses.replace(s, workdir=str(tmp_path), task=dataclasses.replace(
        s.task, name="usertask_mod:Plain"))  # fmt: skip
    with pytest.raises(settings.ConfigError, match="is_target = True"):
        settings.check(bad)


# ---------------------------------------------------------------------------------------
# Training from the command line, evaluation as a prior task, a hostile checker in a run.
# ---------------------------------------------------------------------------------------


def train_command(workdir, tiny_dir, **overrides):
    args = tiny_model.tiny_command(workdir, tiny_dir, **overrides)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_jsonl(Path(workdir) / "metrics.jsonl"), done


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory, tiny_dir):
    """A 2-iteration ES run on a JSONL folder task, trained from the command line."""
    root = tmp_path_factory.mktemp("jsonl")
    write_jsonl(root / "qa" / "train.jsonl", QA[:8])
    write_jsonl(root / "qa" / "test.jsonl", QA[8:])
    keys = {"task.name": "jsonl", "task.path": str(root / "qa"), "task.checker": "numeric",
            "task.template": "Q: {question}", "task.system_prompt": "Be brief.",
            "task.prefill": "<answer>"}  # fmt: skip
    rows, _ = train_command(root / "run", tiny_dir, **keys)
    return root, rows


@pytest.mark.slow
def test_a_jsonl_task_trains_from_the_command_line(jsonl_run):
    root, rows = jsonl_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(r["eval/num_examples"] == 3 for r in rows)
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in rows[1:])
    stored = json.loads((root / "run" / "config.json").read_text())["task"]
    assert stored["name"] == "jsonl" and stored["checker"] == "numeric"
    assert stored["path"] == str(root / "qa") and stored["prefill"] == "<answer>"


@pytest.mark.slow
def test_an_import_path_task_trains_from_the_command_line(user_module, tmp_path, tiny_dir):
    rows, _ = train_command(tmp_path / "run", tiny_dir, **{"task.name": "usertask_mod:make_task"})
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    # Echo's reward varies with the text: the members differ and ES moves the weights.
    assert all(r["reward_std"] > 0 and r["drift_norm"] > 0 for r in rows[1:])


@pytest.mark.slow
def test_user_tasks_as_prior_tasks_in_the_analysis(jsonl_run, user_module, tmp_path):
    root, _ = jsonl_run
    other = write_jsonl(tmp_path / "other.jsonl", [
        {"word": f"w{i}", "answer": f"w{i}"} for i in range(40)
    ])  # fmt: skip
    prior = f"jsonl:{other}"
    evaluate_cli.main([
        "--workdir", str(root / "run"), "--tasks", f"target,{prior},usertask_mod:make_task",
        "--jsonl_template", "Say {word}.", "--num_examples", "3", "--max_new_tokens", "4",
        "--iterations", "0,2", "--batch_size", "4", "--kl_prompts", "2",
        "--kl_max_new_tokens", "3", "--no_progress",
    ])  # fmt: skip
    names = ["jsonl", prior, "usertask_mod:make_task"]
    rows = read_jsonl(root / "run" / analysis.FORGETTING_FILE)
    assert [(r["iteration"], r["task"]) for r in rows] == [(t, n) for t in (0, 2) for n in names]
    assert all(r["num_examples"] == 3 for r in rows)
    kl = read_jsonl(root / "run" / analysis.KL_FILE)
    assert {r["task"] for r in kl} == set(names)
    samples = sorted(p.name for p in (root / "run" / analysis.SAMPLES_DIR).iterdir())
    assert samples == sorted(analysis.forgetting.samples_file(n) for n in names)
    stored = json.loads((root / "run" / analysis.SETTINGS_FILE).read_text())
    assert stored["jsonl_options"] == {"template": "Say {word}."}
    with pytest.raises(SystemExit, match="row 1: no 'prompt' or 'messages'"):  # no template
        evaluate_cli.main(["--workdir", str(root / "run"), "--tasks", prior, "--fresh",
                           "--no_progress"])  # fmt: skip


@pytest.mark.slow
def test_a_hostile_checker_scores_zero_and_the_run_survives(user_module, tmp_path, tiny_dir):
    import usertask_mod

    write_jsonl(tmp_path / "qa" / "train.jsonl", QA[:8])
    write_jsonl(tmp_path / "qa" / "test.jsonl", QA[8:])
    c = tiny_model.tiny_config(tmp_path / "run", tiny_dir, **{
        "task.name": "jsonl", "task.path": str(tmp_path / "qa"), "task.template": "{question}",
        "task.checker": "usertask_mod:hostile",
    })  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model.tiny_train(c)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(r["reward_max"] == 0.0 for r in rows[1:]) and rows[0]["eval/reward"] == 0.0
    reported = [w for w in caught if "usertask_mod:hostile" in str(w.message)]
    assert len(reported) == 1 and "TimeoutError" in str(reported[0].message)
    calls = usertask_mod.CALLS
    assert len(calls) == 3 + 2 * (4 * 3 + 3)  # evals at 0, 1, 2; 4 members x 3 prompts
    assert calls[1] - calls[0] < 1.0 + 3.0  # the first call's 10 s sleep was cut off at 1 s
