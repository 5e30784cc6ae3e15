"""ARC-Challenge (prior task, paper Sec. 4): grade-school science multiple choice, zero-shot CoT.

Reference: `kschweig/es-awd`, `prior_tasks/arc_challenge/{template,data,reward_function,
create_parquet_exports}.py`.

Prompt: a system message and a user message: the instruction header, a blank line, then
`Question: ...`, `Options:` with lettered options and a final `Answer:`; zero-shot chain of
thought, so the model starts a fresh assistant turn. Reward: see `esawd.tasks.choice`
(letters A-E). No differences from the reference.

Data: the reference's exported parquet (question_id, question, option_labels, options, answer,
num_choices; numeric labels already mapped to letters), the hub's `allenai/ai2_arc`
(`ARC-Challenge`: id, question, choices{text,label}, answerKey) or TFDS `ai2_arc/ARC-Challenge`
(labels as class indices). Numeric labels 1-5 become A-E, as in the reference's export.
"""

from __future__ import annotations

from esawd.tasks import choice, data
from esawd.tasks.base import Choices, Example, Message, Reward, Task

SYSTEM_MESSAGE = (
    "You are a science question answering expert. Think step by step and finish your answer "
    'with "The answer is (X)" where X is the correct letter choice.'
)
HEADER = (
    "The following are multiple choice science questions. Think step by step and then finish "
    'your answer with "The answer is (X)" where X is the correct letter choice.\n\n'
)
LETTERS = "ABCDE"


def normalize_label(label: object) -> str:
    """A letter for a label given as a letter, a digit '1'-'5' or a TFDS class index."""
    if isinstance(label, int):
        return LETTERS[label]
    text = str(label).strip().upper()
    return {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(text, text)


def render_messages(question: str, option_labels: list[str], options: list[str]) -> list[Message]:
    """System and user messages for one ARC item."""
    body = (
        f"{HEADER}\nQuestion: {question}\n"
        f"Options:\n{choice.format_options(option_labels, options)}\nAnswer:"
    )
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": body}]


class ARCChallenge(Task):
    """ARC-Challenge: splits validation/test; examples {id, question, option_labels, options,
    answer}."""

    name = "arc_challenge"
    splits = ("validation", "test")
    hub = ("allenai/ai2_arc", "ARC-Challenge")
    tfds_name = "ai2_arc/ARC-Challenge"

    def from_row(self, row: data.Row, *, index: int, split: str) -> Example:
        """An example from an exported row, a hub row or a TFDS row."""
        if "choices" in row:
            labels = [normalize_label(label) for label in row["choices"]["label"]]
            return {
                "id": row.get("id", index),
                "question": row["question"],
                "option_labels": labels,
                "options": list(row["choices"]["text"]),
                "answer": normalize_label(row["answerKey"]),
            }
        return {
            "id": row.get("question_id", index),
            "question": row["question"],
            "option_labels": list(row["option_labels"]),
            "options": list(row["options"]),
            "answer": str(row["answer"]),
        }

    def render_messages(self, example: Example) -> list[Message]:
        """System and user messages from the example's fields."""
        return render_messages(example["question"], example["option_labels"], example["options"])

    def reward(self, completion: str, example: Example) -> Reward:
        """Answer reward only; format ('The answer is (X)' at the end) is reported."""
        return choice.reward(completion, example["answer"], letters=LETTERS)

    def choices(self, example: Example) -> Choices:
        """The question, the option texts as answers (lm-evaluation-harness's arc_challenge)."""
        return Choices(
            f"Question: {example['question']}\nAnswer:",
            tuple(example["options"]),
            list(example["option_labels"]).index(example["answer"]),
        )
