"""Your own task, without editing the package: a data file with a checker (`JsonlTask`), or
any importable object with the task protocol (`ImportedTask`), both scored through a guard
that turns a checker's exception or runaway time into reward 0 (`RewardGuard`).

    task = JsonlTask("data/qa", checker="numeric:1e-3", template="Q: {question}")
    train = task.load("train")                     # data/qa/train.jsonl (or .parquet)
    task.reward("... <answer>42</answer>", train[0])

Rows: `answer` and either `prompt` (text: the user message) or `messages` (a chat list of
{role, content}); a row with neither is rendered by `template` (`str.format` over its fields).
A bad row raises `TaskDataError` naming the file, the row (from 1; a JSONL file's line) and
the field.

The answer a completion gives (`extract_answer`), after the last `</think>`: the content of the
last `<answer>...</answer>`; else the text after the last `answer is` / `answer:`, to the end
of its line (of the next line if nothing follows on its own); else the last non-blank line.
Checkers (`parse_checker`):

- `exact`: equal after `normalize` (NFKC, case-folded, whitespace runs as one space, a leading
  answer marker, markdown `*`/backticks around it and a final `.`/`!` dropped).
- `numeric[:tol]`: the last number of the answer (`1,234`, `-0.5`, `1e-3`, or a whole `a/b`)
  is within tol * max(1, |truth|) of the truth (tol 1e-6 by default).
- `choice`: the letter A-J (a lone letter in any case, else the last standalone capital
  A-J) equals the truth's letter.
- `regex:<pattern>`: the pattern's last match in the completion (after the last `</think>`),
  group 1 if it has a group, else the whole match, equals the truth after `normalize`.
- `module:function`: `function(completion, example)` returns a number in [0, 1].

Reward = the checker's score (answer_reward); format_reward (reported, weight 0) is 1 when the
completion has an `<answer>...</answer>` pair.

Nothing here imports JAX.
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import numbers
import re
import signal
import string
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from esawd.tasks import data, procedural, text
from esawd.tasks.base import (
    Example,
    Message,
    Reward,
    Task,
    make_reward,
    too_long,
    zero_reward,
)

# A checker (or an imported task's reward) that runs longer than this on one completion
# scores 0 for it.
CHECKER_TIMEOUT_SECONDS = 1.0
# After the first alarm, a checker that swallows the timeout is interrupted again this often.
_REPEAT_SECONDS = 0.05
DEFAULT_TOLERANCE = 1e-6
CHOICE_LETTERS = "ABCDEFGHIJ"
ROLES = ("system", "user", "assistant")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# An import path: "package.module:object" (the object may be dotted: "module:Class.method").
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class TaskDataError(ValueError):
    """A row of a user task's data that cannot be used (names the file, row and field)."""


class TaskSpecError(ValueError):
    """A task setting that cannot be resolved; `key` is the setting at fault (name, path,
    checker, template, ...)."""

    def __init__(self, message: str, *, key: str = "name"):
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------
# The guard: exceptions and runaway time score 0, reported once.
# ---------------------------------------------------------------------------------------


class _Alarm(BaseException):
    """Raised into a checker by SIGALRM (a BaseException, so `except Exception` in a checker
    does not swallow it)."""


def call_with_timeout(fn: Callable[..., Any], *args: Any, seconds: float) -> Any:
    """fn(*args), or TimeoutError after `seconds`.

    On the main thread (where scoring runs) a SIGALRM timer interrupts the call, repeating
    until it gives up; an outer timer is restored afterwards. Code stuck inside one C call
    is interrupted only when the call returns. On other threads the call runs in a daemon
    thread that is abandoned (left running) on timeout."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _alarm_call(fn, args, seconds)
    return _thread_call(fn, args, seconds)


def _alarm_call(fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
    running = [True]

    def on_alarm(signum, frame):
        if running[0]:
            raise _Alarm

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _REPEAT_SECONDS)
    started = time.monotonic()
    try:
        try:
            return fn(*args)
        finally:
            running[0] = False
    except _Alarm:
        running[0] = False
        raise TimeoutError(f"took longer than {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if outer_delay > 0:
            left = max(outer_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _thread_call(fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True, name="esawd-checker")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"took longer than {seconds:g} s (left running in a thread)")
    if "error" in box:
        raise box["error"]
    return box["value"]


class RewardGuard:
    """Calls a reward function with a time limit; a failure (an exception, or more than
    `seconds`) scores zero_reward(), and the first one is reported as a RuntimeWarning."""

    def __init__(self, label: str, *, seconds: float = CHECKER_TIMEOUT_SECONDS):
        self.label = label
        self.seconds = seconds
        self.failures = 0  # completions that scored 0 because the checker failed

    def __call__(self, fn: Callable[..., Reward], *args: Any) -> Reward:
        try:
            return call_with_timeout(fn, *args, seconds=self.seconds)
        except (Exception, SystemExit) as err:
            self.failures += 1
            if self.failures == 1:
                warnings.warn(
                    f"{self.label} failed on a completion, which scores 0 "
                    f"({type(err).__name__}: {err}); later failures also score 0 and are not "
                    "reported again.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return zero_reward()


def as_reward(value: Any) -> Reward:
    """A reward dict of exactly {"reward", "format_reward", "answer_reward"} from a user
    reward: a number (reward = answer_reward) or a mapping with at least "reward"."""
    if isinstance(value, Mapping):
        if "reward" not in value:
            raise ValueError(f"the reward dict has no 'reward' key: {dict(value)!r}")
        r = _finite(value["reward"], "reward")
        answer = _finite(value.get("answer_reward", r), "answer_reward")
        return {
            "reward": r,
            "format_reward": _finite(value.get("format_reward", 0.0), "format_reward"),
            "answer_reward": answer,
        }
    r = _finite(value, "reward")
    return {"reward": r, "format_reward": 0.0, "answer_reward": r}


def _finite(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


# ---------------------------------------------------------------------------------------
# Answer extraction and the built-in checkers.
# ---------------------------------------------------------------------------------------

_ANSWER_MARKER = re.compile(r"\banswer\b[ \t*]*(?:is\b|:)[ \t*:]*", re.IGNORECASE)
_LEADING_MARKER = re.compile(
    r"^(?:the\s+)?(?:final\s+)?answer\b[\s*]*(?:is\b|:)[\s*:]*", re.IGNORECASE
)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_WHITESPACE = re.compile(r"\s+")
_STANDALONE_LETTER = re.compile(rf"(?<![A-Za-z0-9])([{CHOICE_LETTERS}])(?![A-Za-z0-9])")


def _last_match(pattern: re.Pattern[str], s: str) -> re.Match[str] | None:
    found = collections.deque(pattern.finditer(s), maxlen=1)
    return found[0] if found else None


def answer_region(completion: str) -> str:
    """The text after the last `</think>` (all of it when there is none)."""
    return completion.rsplit("</think>", 1)[-1]


def has_answer_tag(completion: str) -> bool:
    """Whether the answer region holds an `<answer>...</answer>` pair (the format reward)."""
    return text.has_tag_pair(answer_region(completion), "<answer>", "</answer>")


def extract_answer(completion: str) -> str | None:
    """The answer a completion gives (module docstring); None when it is blank."""
    region = answer_region(completion)
    tagged = text.last_tag_content(region, "<answer>", "</answer>")
    if tagged is not None:
        return tagged.strip()
    marker = _last_match(_ANSWER_MARKER, region)
    if marker is not None:
        rest = region[marker.end() :].lstrip()  # "Answer:" alone on its line: the next line
        end = min((i for i in (rest.find(ch) for ch in text.LINE_BREAKS) if i >= 0), default=-1)
        return (rest if end < 0 else rest[:end]).strip()
    return text.last_line(region)


def normalize(value: Any) -> str:
    """The form `exact` compares: NFKC, case-folded, a leading answer marker, markdown `*` and
    backticks around it and a final `.`/`!` dropped, whitespace runs as one space."""
    s = unicodedata.normalize("NFKC", str(value)).casefold().strip()
    s = _LEADING_MARKER.sub("", s).strip().strip("*`").strip()
    s = s.rstrip(".!").strip().strip("*`").strip()
    return _WHITESPACE.sub(" ", s)


def parse_number(value: Any) -> float | None:
    """The number an answer states: a whole `a/b`, else its last number; None if none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    s = _DIGIT_COMMA.sub("", str(value)).replace("$", "").strip().rstrip(".")
    try:
        fraction = _FRACTION.fullmatch(s)
        if fraction:
            denominator = float(fraction.group(2))
            return None if denominator == 0 else float(fraction.group(1)) / denominator
        last = _last_match(_NUMBER, s)
        return None if last is None else float(last.group(0))
    except (ValueError, OverflowError):
        return None


def parse_letter(value: Any) -> str | None:
    """The choice an answer states: a lone letter A-J in any case, else the last standalone
    capital A-J (so the article 'a' is not a choice)."""
    s = str(value).strip().strip("*`().:!").strip()
    if len(s) == 1 and s.upper() in CHOICE_LETTERS:
        return s.upper()
    last = _last_match(_STANDALONE_LETTER, s)
    return None if last is None else last.group(1)


# A checker: score(completion, example) -> a number in [0, 1]; check(answer) -> None if the
# ground truth is usable, else what is wrong with it.
Score = Callable[[str, Example], float]
Check = Callable[[Any], str | None]


def _scalar(answer: Any) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, str | numbers.Real):
        return f"'answer' must be a string or a number, got {type(answer).__name__}"
    if isinstance(answer, str) and not answer.strip():
        return "'answer' is empty"
    return None


def exact_checker() -> tuple[Score, Check]:
    def score(completion: str, example: Example) -> float:
        given = extract_answer(completion)
        return float(given is not None and normalize(given) == normalize(example["answer"]))

    return score, _scalar


def numeric_checker(tolerance: float) -> tuple[Score, Check]:
    def score(completion: str, example: Example) -> float:
        given = extract_answer(completion)
        value = None if given is None else parse_number(given)
        truth = parse_number(example["answer"])
        if value is None or truth is None:
            return 0.0
        return float(abs(value - truth) <= tolerance * max(1.0, abs(truth)))

    def check(answer: Any) -> str | None:
        if _scalar(answer) or parse_number(answer) is None:
            return f"'answer' {answer!r} is not a number (checker numeric)"
        return None

    return score, check


def choice_checker() -> tuple[Score, Check]:
    def score(completion: str, example: Example) -> float:
        given = extract_answer(completion)
        truth = str(example["answer"]).strip().upper()
        return float(given is not None and parse_letter(given) == truth)

    def check(answer: Any) -> str | None:
        if not (isinstance(answer, str) and answer.strip().upper() in tuple(CHOICE_LETTERS)):
            return f"'answer' {answer!r} is not one letter A-J (checker choice)"
        return None

    return score, check


def regex_checker(pattern: re.Pattern[str]) -> tuple[Score, Check]:
    def score(completion: str, example: Example) -> float:
        last = _last_match(pattern, answer_region(completion))
        if last is None:
            return 0.0
        given = last.group(1) if pattern.groups else last.group(0)
        return float(given is not None and normalize(given) == normalize(example["answer"]))

    return score, _scalar


def import_object(path: str, *, key: str) -> Any:
    """The object `module:attr` (attr may be dotted) names; TaskSpecError if it cannot."""
    if not IMPORT_PATH.fullmatch(path):
        raise TaskSpecError(f"{path!r} is not an import path 'package.module:object'", key=key)
    module_name, attr = path.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure of the user's module, reported
        raise TaskSpecError(
            f"cannot import {module_name!r} for {path!r} ({type(err).__name__}: {err}); is its "
            "folder on sys.path (PYTHONPATH, or pip install -e)?",
            key=key,
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskSpecError(f"{module_name} has no {attr!r} (from {path!r})", key=key) from None
    return obj


def function_checker(path: str) -> tuple[Score, Check]:
    fn = import_object(path, key="checker")
    if not callable(fn):
        raise TaskSpecError(f"checker {path!r} is not callable", key="checker")

    def score(completion: str, example: Example) -> float:
        value = fn(completion, example)
        out = _finite(value, f"checker {path} result")
        if not 0.0 <= out <= 1.0:
            raise ValueError(f"checker {path} returned {out}, outside [0, 1]")
        return out

    return score, lambda answer: None


def parse_checker(spec: str) -> tuple[Score, Check]:
    """(score, check) of a checker setting: exact, numeric[:tol], choice, regex:<pattern>,
    or module:function ('' means exact)."""
    spec = spec.strip() or "exact"
    kind, _, arg = spec.partition(":")
    if kind == "exact" and not arg:
        return exact_checker()
    if kind == "choice" and not arg:
        return choice_checker()
    if kind == "numeric":
        try:
            tolerance = float(arg) if arg else DEFAULT_TOLERANCE
        except ValueError:
            tolerance = -1.0
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise TaskSpecError(
                f"checker {spec!r}: the tolerance must be a number >= 0, e.g. numeric:1e-3",
                key="checker",
            )
        return numeric_checker(tolerance)
    if kind == "regex":
        try:
            pattern = re.compile(arg)
        except re.error as err:
            raise TaskSpecError(f"checker {spec!r}: bad pattern ({err})", key="checker") from None
        if not arg:
            raise TaskSpecError("checker 'regex:' needs a pattern: regex:<pattern>", key="checker")
        return regex_checker(pattern)
    if IMPORT_PATH.fullmatch(spec):
        return function_checker(spec)
    raise TaskSpecError(
        f"checker {spec!r} is unknown; use exact, numeric, numeric:<tolerance>, choice, "
        "regex:<pattern> or an import path module:function",
        key="checker",
    )


# ---------------------------------------------------------------------------------------
# A task from a JSONL / parquet file or a folder of split files.
# ---------------------------------------------------------------------------------------


def read_numbered_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number from 1, row) of a .jsonl (the line number), .json list or .parquet file."""
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskDataError(f"{path} row {number}: not valid JSON ({err})") from None
        return
    try:
        rows = data.read_rows(path)
    except (json.JSONDecodeError, ValueError) as err:
        raise TaskDataError(f"{path}: cannot read it ({err})") from None
    yield from enumerate(rows, 1)


def _split_name(path: Path) -> str:
    return re.sub(r"-\d+-of-\d+$", "", path.stem)


class JsonlTask(Task):
    """A target task from your rows (module docstring); `path` is a data file (split by row
    hash: a quarter `test`, the rest `train`) or a folder of `<split>.jsonl`/`.parquet`."""

    name = "jsonl"
    is_target = True

    def __init__(
        self,
        path: str | Path,
        *,
        checker: str = "",
        system_prompt: str = "",
        template: str = "",
        prefill: str = "",
    ):
        self.path = Path(path).expanduser()
        self.checker = checker.strip() or "exact"
        self.system_prompt = system_prompt
        self.template = template
        self.prefill = prefill
        self._score, self._check_answer = parse_checker(self.checker)
        self._template_fields = _template_fields(template)
        self.splits = self._find_splits()
        self.guard = RewardGuard(f"checker {self.checker!r} of task jsonl:{path}")

    def __repr__(self) -> str:
        return f"<esawd task 'jsonl' {str(self.path)!r} checker={self.checker!r}>"

    def _find_splits(self) -> tuple[str, ...]:
        if self.path.is_file():
            if self.path.suffix.lower() not in DATA_SUFFIXES:
                raise TaskSpecError(
                    f"task path {str(self.path)!r} is not a .jsonl, .json or .parquet file",
                    key="path",
                )
            return procedural.SPLITS
        if not self.path.is_dir():
            raise TaskSpecError(f"task path {str(self.path)!r}: no such file or folder", key="path")
        files = [p for d in (self.path, self.path / "data") if d.is_dir() for p in d.iterdir()]
        names = {_split_name(p) for p in files if p.suffix.lower() in DATA_SUFFIXES}
        if not names:
            raise TaskSpecError(
                f"task path {str(self.path)!r} holds no .jsonl, .json or .parquet files; put "
                "train.jsonl and test.jsonl (or .parquet) there",
                key="path",
            )
        order = {"train": 0, "validation": 1, "test": 2}
        return tuple(sorted(names, key=lambda n: (order.get(n, 3), n)))

    # ----- data -----------------------------------------------------------------------------

    def load(
        self, split: str, data_dir: str | Path | None = None, *, source: str = "auto"
    ) -> list[Example]:
        """Every example of `split`, in file order (data_dir and source are not used: the
        rows come from the task's own path). Every row read is checked (TaskDataError)."""
        del data_dir, source
        self.check_split(split)
        if self.path.is_file():
            # Every row is checked, also those of the other split.
            rows = [(row, self._example(self.path, n, row)) for n, row in _rows(self.path)]
            return [e for row, e in rows if procedural.split_of(_row_key(row)) == split]
        files = data.find_split_files(self.path, split)
        return [self._example(path, n, row) for path in files for n, row in _rows(path)]

    def _example(self, path: Path, number: int, row: Any) -> Example:
        where = f"{path} row {number}"
        if not isinstance(row, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        need = "rows need 'answer' and 'prompt' or 'messages'" + (
            ", or the fields of task.template" if self.template else ""
        )
        if row.get("answer") is None:
            raise TaskDataError(f"{where}: no 'answer' ({need})")
        problem = self._check_answer(row["answer"])
        if problem:
            raise TaskDataError(f"{where}: {problem}")
        if row.get("messages") is not None:
            messages = row["messages"]
            if not (
                isinstance(messages, list)
                and messages
                and all(
                    isinstance(m, dict)
                    and m.get("role") in ROLES
                    and isinstance(m.get("content"), str)
                    for m in messages
                )
            ):
                raise TaskDataError(
                    f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} "
                    f"objects with roles {', '.join(ROLES)} and text content"
                )
        elif row.get("prompt") is not None:
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise TaskDataError(
                    f"{where}: 'prompt' must be non-empty text (a chat list goes in 'messages')"
                )
        elif not self.template:
            raise TaskDataError(f"{where}: no 'prompt' or 'messages' ({need})")
        else:
            missing = [f for f in self._template_fields if f not in row]
            if missing:
                raise TaskDataError(
                    f"{where}: task.template uses the field {missing[0]!r}, which the row lacks "
                    f"(it has {', '.join(sorted(row))})"
                )
            try:
                self.template.format_map(row)
            except Exception as err:  # noqa: BLE001 - {field[9]}, {field.attr}, a bad format
                raise TaskDataError(
                    f"{where}: task.template cannot be filled from the row "
                    f"({type(err).__name__}: {err})"
                ) from None
        example = dict(row)
        example.setdefault("id", f"{path.stem}-{number}")
        return example

    # ----- prompt and reward ----------------------------------------------------------------

    def messages(self, example: Example) -> list[Message]:
        """The row's messages, else a user message (its prompt, else the template over its
        fields), with the system prompt first and the prefill last where they are set."""
        if example.get("messages") is not None:
            out = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
        else:
            prompt = example.get("prompt")
            if prompt is None:
                prompt = self.template.format_map(example)
            out = [{"role": "user", "content": prompt}]
        if self.system_prompt and out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": self.system_prompt})
        if self.prefill and out[-1]["role"] != "assistant":
            out.append({"role": "assistant", "content": self.prefill})
        return out

    def render_messages(self, example: Example) -> list[Message]:
        return self.messages(example)

    def reward(self, completion: str, example: Example) -> Reward:
        """answer_reward = the checker's score (0 if it raises or runs over the time limit);
        format_reward = an `<answer>...</answer>` pair is present; reward = answer_reward."""
        if too_long(completion):
            return zero_reward()
        return self.guard(self._reward, completion, example)

    def _reward(self, completion: str, example: Example) -> Reward:
        score = _finite(self._score(completion, example), "checker score")
        return make_reward(float(has_answer_tag(completion)), score, format_weight=0.0)


def _template_fields(template: str) -> tuple[str, ...]:
    """The top-level field names a str.format template uses; TaskSpecError if malformed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise TaskSpecError(f"template {template!r} is malformed ({err})", key="template") from None
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name.isdigit():
            raise TaskSpecError(
                f"template {template!r}: use named fields like {{question}}, not {{{field}}}",
                key="template",
            )
        fields.append(name)
    return tuple(dict.fromkeys(fields))


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    return read_numbered_rows(path)


def _row_key(row: dict) -> str:
    """What decides a single file's split: the row's fields but its answer, so a problem keeps
    its split when rows move or are added."""
    fields = {k: v for k, v in row.items() if k != "answer"}
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------
# Any importable object with the task protocol.
# ---------------------------------------------------------------------------------------

PROTOCOL = ("name", "splits", "messages", "reward")


class ImportedTask(Task):
    """The object `module:factory` names (a Task instance, or a class or function returning
    one), checked against the protocol; its reward runs under a RewardGuard and may return a
    number or a dict with at least "reward"."""

    def __init__(self, spec: str):
        obj = import_object(spec, key="name")
        if not _is_task_like(obj) and callable(obj):
            try:
                obj = obj()
            except Exception as err:  # noqa: BLE001 - the user's factory, reported
                raise TaskSpecError(
                    f"{spec}() raised {type(err).__name__}: {err}", key="name"
                ) from None
        missing = [a for a in PROTOCOL if not hasattr(obj, a)]
        if not (hasattr(obj, "load") or hasattr(obj, "generate")):
            missing.append("load or generate")
        if missing:
            raise TaskSpecError(
                f"{spec} gives {type(obj).__name__}, which lacks {', '.join(missing)} of the "
                "task protocol (docs/tasks.md, 'Your own task'); subclass esawd.tasks.Task",
                key="name",
            )
        self.inner = obj
        self.spec = spec
        self.name = str(obj.name or spec)
        self.splits = tuple(obj.splits)
        if not self.splits or not all(isinstance(s, str) for s in self.splits):
            raise TaskSpecError(f"{spec}: splits must be a non-empty tuple of names", key="name")
        self.is_target = bool(getattr(obj, "is_target", False))
        self.procedural = bool(getattr(obj, "procedural", False))
        self.guard = RewardGuard(f"reward of task {spec}")

    def __repr__(self) -> str:
        return f"<esawd task {self.spec!r}: {self.inner!r}>"

    def __getattr__(self, attr: str) -> Any:  # the inner task's own attributes
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def generated(self, data_dir: str | Path | None) -> bool:
        if isinstance(self.inner, Task):
            return self.inner.generated(data_dir)
        return self.procedural or (not data_dir and hasattr(self.inner, "generate"))

    def load(
        self, split: str, data_dir: str | Path | None = None, *, source: str = "auto"
    ) -> list[Example]:
        self.check_split(split)
        if not hasattr(self.inner, "load"):
            raise ValueError(f"{self.spec} has no load(); its examples come from generate().")
        if source != "auto":
            return list(self.inner.load(split, data_dir, source=source))
        return list(self.inner.load(split, data_dir))

    def generate(self, num_examples: int, *, seed: int, split: str = "train") -> list[Example]:
        if not hasattr(self.inner, "generate"):
            raise ValueError(f"{self.spec} has no generate(); give its data (task.data_dir).")
        return list(self.inner.generate(num_examples, seed=seed, split=split))

    def messages(self, example: Example) -> list[Message]:
        return [{"role": m["role"], "content": m["content"]} for m in self.inner.messages(example)]

    def reward(self, completion: str, example: Example) -> Reward:
        """The inner reward, as a reward dict; 0 if it raises or runs over the time limit."""
        return self.guard(lambda c, e: as_reward(self.inner.reward(c, e)), completion, example)


def _is_task_like(obj: Any) -> bool:
    return not isinstance(obj, type) and all(hasattr(obj, a) for a in PROTOCOL)
