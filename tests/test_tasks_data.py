"""Data loading: the real splits (through ESAWD_DATA_DIR), hub/TFDS schemas on small fixtures
written here, the Countdown generator, the evaluation subset and user errors."""

import collections
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from esawd.tasks import (
    EVAL_SUBSET_SEED,
    EVAL_SUBSET_SIZE,
    PRIOR_TASKS,
    TARGET_TASKS,
    TASK_NAMES,
    eval_subset,
    get_task,
)
from esawd.tasks.countdown import generate

# Row counts from the data folder's README.
EXPECTED_ROWS = {
    ("countdown", "train"): 200,
    ("countdown", "test"): 2000,
    ("gsm8k", "train"): 200,
    ("gsm8k", "test"): 500,
    ("proofwriter", "train"): 200,
    ("proofwriter", "test"): 1000,
    ("piqa", "validation"): 1838,
    ("arc_challenge", "validation"): 299,
    ("arc_challenge", "test"): 1172,
    ("mmlu_pro", "validation"): 70,
    ("mmlu_pro", "test"): 12032,
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = os.environ.get("ESAWD_DATA_DIR")
    if not path:
        pytest.skip(
            "ESAWD_DATA_DIR is not set: point it at the benchmark data folder "
            "(`make test` sets it to ../shared/data when that folder exists) to run the "
            "real-data tests"
        )
    if not Path(path).is_dir():
        pytest.fail(f"ESAWD_DATA_DIR={path!r} is not a directory")
    return Path(path)


# ----- registry and user errors ---------------------------------------------------------------


def test_registry_names_and_kinds():
    assert TASK_NAMES == (
        "countdown",
        "gsm8k",
        "proofwriter",
        "hellaswag",
        "piqa",
        "arc_challenge",
        "mmlu_pro",
        "arithmetic",
        "rules",
    )
    assert TARGET_TASKS == ("countdown", "gsm8k", "proofwriter", "arithmetic", "rules")
    assert PRIOR_TASKS == ("hellaswag", "piqa", "arc_challenge", "mmlu_pro")
    for name in TARGET_TASKS:
        assert get_task(name).splits == ("train", "test")


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown task 'gsm9k'.*countdown, gsm8k, proofwriter"):
        get_task("gsm9k")


def test_bad_split_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"gsm8k has no split 'validation'; valid splits: train, test"
    ):
        get_task("gsm8k").load("validation", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No 'test' split of gsm8k"):
        get_task("gsm8k").load("test", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        get_task("gsm8k").load("test", tmp_path / "missing")
    with pytest.raises(ValueError, match="Unknown source"):
        get_task("gsm8k").load("test", tmp_path, source="s3")
    with pytest.raises(ValueError, match="not read from the Hugging Face hub"):
        get_task("countdown").load("test")
    with pytest.raises(ValueError, match="not in the TensorFlow Datasets catalog"):
        get_task("mmlu_pro").load("test", source="tfds")


# ----- the real data ------------------------------------------------------------------------


@pytest.mark.parametrize("name, split", sorted(EXPECTED_ROWS))
def test_real_split_row_counts(data_dir, name, split):
    examples = get_task(name).load(split, data_dir)
    assert len(examples) == EXPECTED_ROWS[(name, split)]


def test_hellaswag_is_absent_from_the_data_folder_with_a_clear_error(data_dir):
    with pytest.raises(FileNotFoundError, match="No 'validation' split of hellaswag"):
        get_task("hellaswag").load("validation", data_dir)


def test_countdown_json_and_parquet_agree(data_dir, tmp_path):
    # countdown.json alone (first 200 rows = train) gives the same examples and prompts.
    only_json = tmp_path / "countdown"
    only_json.mkdir()
    (only_json / "countdown.json").write_bytes(
        (data_dir / "countdown" / "countdown.json").read_bytes()
    )
    task = get_task("countdown")
    for split in task.splits:
        from_json, from_parquet = task.load(split, tmp_path), task.load(split, data_dir)
        assert len(from_json) == len(from_parquet)
        for a, b in zip(from_json, from_parquet, strict=True):
            assert (a["id"], a["numbers"], a["target"], a["solution"]) == (
                b["id"],
                b["numbers"],
                b["target"],
                b["solution"],
            )
            assert task.messages(a) == task.messages(b)


@pytest.mark.parametrize("name", [n for n in TARGET_TASKS if not get_task(n).procedural])
def test_templates_reproduce_the_stored_verl_prompts(data_dir, name):
    task = get_task(name)
    for split in task.splits:
        for example in task.load(split, data_dir):
            assert task.render_messages(example) == example["prompt"]


def uses_exactly(solution: str, numbers: list[int]) -> bool:
    return collections.Counter(int(n) for n in re.findall(r"\d+", solution)) == collections.Counter(
        numbers
    )


def test_countdown_ground_truth_gets_full_marks(data_dir):
    task = get_task("countdown")
    counts = collections.Counter()
    for split in task.splits:
        for example in task.load(split, data_dir):
            solution = example["solution"]
            if solution is None:
                counts["no solution"] += 1
                continue
            completion = f" I combine the numbers. </think>\n<answer>{solution}</answer>"
            reward = task.reward(completion, example)
            if uses_exactly(solution, example["numbers"]):
                counts["valid"] += 1
                assert reward["reward"] == pytest.approx(1.1), example
            else:
                # The published solution reuses a number: the reference's check refuses it too.
                counts["reuses a number"] += 1
                assert reward == {
                    "reward": pytest.approx(0.1),
                    "format_reward": 1.0,
                    "answer_reward": 0.0,
                }
    assert counts == {"valid": 2166, "no solution": 19, "reuses a number": 15}


def test_gsm8k_ground_truth_gets_full_marks(data_dir):
    task = get_task("gsm8k")
    for split in task.splits:
        for example in task.load(split, data_dir):
            r = task.reward(f"Let me compute.\n#### {example['answer']}", example)
            assert r["reward"] == pytest.approx(1.1), example["id"]
            # The dataset's own worked solution ends with '#### <answer>' as well.
            assert task.reward(example["solution"], example)["reward"] == pytest.approx(1.1)


def test_proofwriter_ground_truth_gets_full_marks(data_dir):
    task = get_task("proofwriter")
    labels = collections.Counter()
    for split in task.splits:
        for example in task.load(split, data_dir):
            labels[example["answer"]] += 1
            r = task.reward(f" The theory says so.\nAnswer: {example['answer']}", example)
            assert r["reward"] == pytest.approx(1.1), example["id"]
    assert set(labels) == {"True", "False", "Unknown"}


@pytest.mark.parametrize("name", ["piqa", "arc_challenge", "mmlu_pro"])
def test_prior_task_answers_are_well_formed_and_score(data_dir, name):
    task = get_task(name)
    for split in task.splits:
        for example in task.load(split, data_dir):
            if name == "piqa":
                assert example["answer"] in ("1", "2")
                completion = example["answer"]
            else:
                labels = example.get("option_labels") or "ABCDEFGHIJ"[: len(example["options"])]
                assert example["answer"] in labels
                completion = f"Reasoning. The answer is ({example['answer']})."
            assert task.reward(completion, example) == {
                "reward": 1.0,
                "format_reward": 1.0,
                "answer_reward": 1.0,
            }


def test_mmlu_pro_few_shot_comes_from_validation_of_the_same_category(data_dir):
    task = get_task("mmlu_pro")
    test = task.load("test", data_dir)
    validation = task.load("validation", data_dir)
    first_by_category = collections.defaultdict(list)
    for v in validation:
        first_by_category[v["category"]].append(v["id"])
    for example in test[:500]:
        shots = [s["id"] for s in example["few_shot"]]
        assert shots == first_by_category[example["category"]][:5]
        assert len(shots) == 5
    for example in validation:
        assert example["id"] not in [s["id"] for s in example["few_shot"]]
        assert all(s["category"] == example["category"] for s in example["few_shot"])


def test_eval_subset_matches_the_reference_protocol(data_dir):
    import random

    test = get_task("mmlu_pro").load("test", data_dir)
    subset = eval_subset(test)
    assert (EVAL_SUBSET_SIZE, EVAL_SUBSET_SEED) == (2048, 2357)
    assert len(subset) == 2048
    indices = random.Random(2357).sample(range(len(test)), k=2048)
    assert [e["id"] for e in subset] == [test[i]["id"] for i in indices]
    small = get_task("arc_challenge").load("test", data_dir)
    assert eval_subset(small) == small  # fewer than 2048: all, in order


@pytest.mark.parametrize(
    ("name", "split", "options"),
    [("piqa", "validation", {2}), ("arc_challenge", "test", {3, 4, 5}), ("mmlu_pro", "test", None)],
)
def test_every_real_prior_task_row_is_a_multiple_choice_item(data_dir, name, split, options):
    """Likelihood scoring (esawd.analysis.likelihood) reads every row: the answer indexes its
    options, which are non-empty text after a non-empty context."""
    task = get_task(name)
    for example in task.load(split, data_dir):
        item = task.choices(example)
        assert item.context.strip() and all(o.strip() for o in item.options), example["id"]
        assert options is None or len(item.options) in options, example["id"]
        assert 2 <= len(item.options) <= 10


# ----- formats without the real data --------------------------------------------------------


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


HELLASWAG_ROWS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell.",
        "ctx_b": "she",
        "ctx": "A lady walks to a barbell. she",
        "endings": ["bends down.", "lifts it.", "sits.", "walks away."],
        "source_id": "activitynet~v_-lJS58hyo1c",
        "split": "val",
        "split_type": "zeroshot",
        "label": "0",
    },
]


def test_hellaswag_reads_the_hub_schema_from_shards_and_jsonl(tmp_path):
    task = get_task("hellaswag")
    write_parquet(tmp_path / "hellaswag" / "validation-00000-of-00002.parquet", HELLASWAG_ROWS[:1])
    write_parquet(tmp_path / "hellaswag" / "validation-00001-of-00002.parquet", HELLASWAG_ROWS[1:])
    examples = task.load("validation", tmp_path)
    assert [e["id"] for e in examples] == [24, 92]  # shard order
    assert examples[0]["context"] == "A man is sitting on a roof. he"
    assert examples[0]["answer"] == "3" and examples[1]["answer"] == "0"
    assert task.reward("3", examples[0])["reward"] == 1.0

    jsonl_dir = tmp_path / "as_jsonl"
    (jsonl_dir / "hellaswag").mkdir(parents=True)
    with open(jsonl_dir / "hellaswag" / "validation.jsonl", "w") as f:
        for row in HELLASWAG_ROWS:
            f.write(json.dumps({**row, "label": int(row["label"])}) + "\n")
    assert task.load("validation", jsonl_dir) == examples


def test_data_dir_may_be_the_task_folder_itself(tmp_path):
    write_parquet(tmp_path / "validation-00000-of-00001.parquet", HELLASWAG_ROWS)
    assert len(get_task("hellaswag").load("validation", tmp_path)) == 2


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in `datasets` module that serves hub-schema rows and records the calls."""
    calls = []
    tables = {
        ("openai/gsm8k", "main", "test"): [
            {"question": "  Natalia sold 48 clips and then 24.  ", "answer": "48+24=72\n#### 72"},
            {"question": "How much is 1,000 plus 1?", "answer": "#### 1,001"},
        ],
        ("tasksource/proofwriter", None, "train"): [
            {
                "id": "p1",
                "theory": "Anne is white.",
                "question": "Anne is white.",
                "answer": "True",
            },
        ],
        ("ybisk/piqa", None, "validation"): [
            {"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
            {"goal": "Dry hair.", "sol1": "Use water.", "sol2": "Use a towel.", "label": 1},
        ],
        ("allenai/ai2_arc", "ARC-Challenge", "test"): [
            {
                "id": "Mercury_1",
                "question": "Which is a gas?",
                "choices": {
                    "text": ["Ice", "Steam", "Rock", "Iron"],
                    "label": ["1", "2", "3", "4"],
                },
                "answerKey": "2",
            }
        ],
        ("TIGER-Lab/MMLU-Pro", None, "test"): [
            {
                "question_id": 7,
                "question": "2+2?",
                "options": ["3", "4"],
                "answer": "B",
                "answer_index": 1,
                "cot_content": "",
                "category": "math",
                "src": "x",
            }
        ],
        ("TIGER-Lab/MMLU-Pro", None, "validation"): [
            {
                "question_id": 1,
                "question": "1+1?",
                "options": ["2", "3"],
                "answer": "A",
                "answer_index": 0,
                "cot_content": "A: 1+1=2. The answer is (A).",
                "category": "math",
                "src": "y",
            }
        ],
    }

    def load_dataset(path, config=None, *, split):
        calls.append((path, config, split))
        return list(tables[(path, config, split)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_rows_become_the_same_examples_as_the_reference_files(fake_hub):
    gsm = get_task("gsm8k").load("test")
    assert fake_hub == [("openai/gsm8k", "main", "test")]
    assert [(e["id"], e["answer"]) for e in gsm] == [("test-0", "72"), ("test-1", "1001")]
    assert gsm[0]["question"] == "Natalia sold 48 clips and then 24."
    assert (
        get_task("gsm8k")
        .messages(gsm[0])[0]["content"]
        .startswith(
            "Solve this grade-school math word problem step by step.\n\n"
            "Problem: Natalia sold 48 clips and then 24.\n\n"
        )
    )
    pw = get_task("proofwriter").load("train", source="hub")
    assert pw[0]["answer"] == "True"
    assert get_task("proofwriter").messages(pw[0])[-1] == {
        "role": "assistant",
        "content": "Reasoning:",
    }
    piqa = get_task("piqa").load("validation")
    assert [e["answer"] for e in piqa] == ["1", "2"]  # 0/1 class indices shifted, as exported
    arc = get_task("arc_challenge").load("test")
    assert arc[0]["option_labels"] == ["A", "B", "C", "D"] and arc[0]["answer"] == "B"
    mmlu = get_task("mmlu_pro").load("test")
    assert [s["id"] for s in mmlu[0]["few_shot"]] == [1]
    assert ("TIGER-Lab/MMLU-Pro", None, "validation") in fake_hub


def test_hub_without_datasets_installed_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"needs the `datasets` package.*data_dir="):
        get_task("gsm8k").load("test")


def test_tfds_source_reads_catalog_schemas():
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="the tfds extra (tensorflow-datasets) is not installed"
    )
    import tensorflow as tf

    # Random rows with the catalog builders' own feature specs: checks names and types.
    with tfds.testing.mock_data(num_examples=3):
        for name, split in [
            ("hellaswag", "validation"),
            ("piqa", "validation"),
            ("arc_challenge", "test"),
        ]:
            examples = get_task(name).load(split, source="tfds")
            assert len(examples) == 3, name
            for e in examples:
                assert isinstance(e["answer"], str)
                if name == "piqa":
                    assert e["answer"] in ("1", "2")
                if name == "arc_challenge":
                    assert e["answer"] in "ABCDE" and set(e["option_labels"]) <= set("ABCDE")
                    assert all(isinstance(o, str) for o in e["options"])
                if name == "hellaswag":
                    assert isinstance(e["context"], str) and isinstance(e["endings"], list)

    # GSM8K answers must parse, so its rows are hand-made (with the builder's feature names).
    def as_dataset_fn(builder, *args, **kwargs):
        assert set(builder.info.features) == {"question", "answer", "annotation", "short_answer"}
        return tf.data.Dataset.from_tensor_slices(
            {
                "question": [" Natalia sold 48 clips. "],
                "answer": ["48/2 = 24\n#### 72"],
                "annotation": ["48/2 = 24\n"],
                "short_answer": ["72"],
            }
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
        (gsm,) = get_task("gsm8k").load("test", source="tfds")
    assert (gsm["question"], gsm["answer"]) == ("Natalia sold 48 clips.", "72")


# ----- the Countdown generator --------------------------------------------------------------


def test_generated_countdown_is_seeded_and_solvable():
    a = generate(200, seed=3)
    assert a == generate(200, seed=3)
    assert a != generate(200, seed=4)
    task = get_task("countdown")
    for example in a:
        assert 3 <= len(example["numbers"]) <= 4
        assert all(1 <= n <= 99 for n in example["numbers"])
        assert 1 <= int(example["target"]) <= 999
        assert uses_exactly(example["solution"], example["numbers"])
        # Independent check of the solution's value with Python's own arithmetic.
        assert eval(example["solution"]) == pytest.approx(float(example["target"]))
        completion = f" Found it. </think>\n<answer>{example['solution']}</answer>"
        assert task.reward(completion, example)["reward"] == pytest.approx(1.1)
    assert task.generate(5, seed=1) == generate(5, seed=1)
    assert {len(e["numbers"]) for e in a} == {3, 4}
    assert any("/" in e["solution"] for e in a) and any("*" in e["solution"] for e in a)
