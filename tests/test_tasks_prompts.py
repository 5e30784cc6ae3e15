"""Prompt rendering against the reference's chat text (expected strings written by hand from
kschweig/es-awd's templates) and the chat-template tokenization helper, with a real
transformers tokenizer built offline from the `tokenizers` library."""

import numpy as np
import pytest

from esawd.prompts import encode_prompts, prompt_token_ids
from esawd.tasks import get_task

# A ChatML template, the format of the Qwen2.5 and SmolLM2 instruct models the paper uses.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

COUNTDOWN_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant. You first think about the reasoning "
    "process in your mind and then provide the user with the answer.<|im_end|>\n"
    "<|im_start|>user\nUsing the numbers [44, 19, 35], create an equation that equals 98. You "
    "can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
    "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> "
    "tags, for example <answer> (1 + 2) / 3 </answer>.<|im_end|>\n"
    "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
)
GSM8K_TEXT = (
    "<|im_start|>user\nSolve this grade-school math word problem step by step.\n\n"
    "Problem: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?\n\n"
    "Write short calculations and check the final result.\n"
    "On the last line, write only: #### <number><|im_end|>\n<|im_start|>assistant\n"
)
PROOFWRITER_TEXT = (
    "<|im_start|>user\nYou are given a theory and a question. Determine whether the question is "
    "entailed by the theory.\n\nFirst write your reasoning.\nOn the last line, write exactly one "
    "of these formats:\nAnswer: True\nAnswer: False\nAnswer: Unknown\nDo not add any other "
    "words, punctuation, or explanation after the final label.\n\n"
    "Theory: The dog is not blue. If someone is green and not cold then they are round.\n"
    "Question: The dog is not blue.<|im_end|>\n<|im_start|>assistant\nReasoning:"
)
HELLASWAG_TEXT = (
    "<|im_start|>system\nYou are given a situation followed by four possible endings. Choose "
    "the most appropriate ending by selecting the corresponding number. Reply with only the "
    "option number: 0, 1, 2, or 3.<|im_end|>\n<|im_start|>user\n"
    "Activity: Roof shingle removal\nContext: A man is sitting on a roof. he\n\n"
    "Possible endings:\n0. is using wrap to wrap a pair of skis.\n1. is ripping level tiles "
    "off.\n2. is holding a rubik's cube.\n3. starts pulling up roofing on a roof.\n\n"
    "Which ending best completes the scenario?<|im_end|>\n<|im_start|>assistant\n"
)
PIQA_TEXT = (
    "<|im_start|>system\nYou are given a physical commonsense goal and two possible solutions. "
    "Choose the better solution by selecting the corresponding number. Reply with only the "
    "option number: 1 or 2.<|im_end|>\n<|im_start|>user\n"
    "Goal: How do I ready a guinea pig cage for it's new occupants?\n\nPossible solutions:\n"
    "1. Use paper strips.\n2. Use jeans material.\n\n"
    "Which solution is more likely to work?<|im_end|>\n<|im_start|>assistant\n"
)
ARC_TEXT = (
    "<|im_start|>system\nYou are a science question answering expert. Think step by step and "
    'finish your answer with "The answer is (X)" where X is the correct letter choice.'
    "<|im_end|>\n<|im_start|>user\nThe following are multiple choice science questions. Think "
    'step by step and then finish your answer with "The answer is (X)" where X is the correct '
    "letter choice.\n\n\nQuestion: Which is most likely?\nOptions:\nA. Density drops.\n"
    "B. Years get longer.\nC. Days get shorter.\nD. Gravity grows.\nAnswer:<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MMLU_TEXT = (
    "<|im_start|>system\nYou are a knowledge expert solving multiple-choice questions. Think "
    'step by step and finish your answer with "The answer is (X)" where X is the correct letter '
    "choice.<|im_end|>\n<|im_start|>user\nThe following are multiple choice questions (with "
    'answers) about math. Think step by step and then finish your answer with "The answer is '
    '(X)" where X is the correct letter choice.\n\n'
    "Question: 1+1?\nOptions:\nA. 2\nB. 3\nAnswer: A: Let's think step by step. 1+1=2. "
    "The answer is (A).\n\n"
    "Question: 2+1?\nOptions:\nA. 4\nB. 3\nC. 5\nAnswer: A: Let's think step by step. 2+1=3. "
    "The answer is (B).\n\n"
    "Question: 2+2?\nOptions:\nA. 3\nB. 4\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
)


def mmlu_shot(question, options, cot):
    return {"question": question, "options": options, "cot_content": cot, "category": "math"}


EXAMPLES = {
    "countdown": ({"numbers": [44, 19, 35], "target": "98"}, COUNTDOWN_TEXT),
    "gsm8k": (
        {
            "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
            "as many clips in May. How many clips did Natalia sell altogether in April and May?",
            "answer": "72",
        },
        GSM8K_TEXT,
    ),
    "proofwriter": (
        {
            "theory": "The dog is not blue. If someone is green and not cold then they are round.",
            "question": "The dog is not blue.",
            "answer": "True",
        },
        PROOFWRITER_TEXT,
    ),
    "hellaswag": (
        {
            "activity_label": "Roof shingle removal",
            "context": "A man is sitting on a roof. he",
            "endings": [
                "is using wrap to wrap a pair of skis.",
                "is ripping level tiles off.",
                "is holding a rubik's cube.",
                "starts pulling up roofing on a roof.",
            ],
            "answer": "3",
        },
        HELLASWAG_TEXT,
    ),
    "piqa": (
        {
            "goal": "How do I ready a guinea pig cage for it's new occupants?",
            "sol1": "Use paper strips.",
            "sol2": "Use jeans material.",
            "answer": "1",
        },
        PIQA_TEXT,
    ),
    "arc_challenge": (
        {
            "question": "Which is most likely?",
            "option_labels": ["A", "B", "C", "D"],
            "options": [
                "Density drops.",
                "Years get longer.",
                "Days get shorter.",
                "Gravity grows.",
            ],
            "answer": "C",
        },
        ARC_TEXT,
    ),
    "mmlu_pro": (
        {
            "question": "2+2?",
            "options": ["3", "4"],
            "answer": "B",
            "category": "math",
            "few_shot": [
                mmlu_shot(
                    "1+1?", ["2", "3"], "A: Let's think step by step. 1+1=2. The answer is (A)."
                ),
                mmlu_shot(
                    "2+1?",
                    ["4", "3", "5"],
                    "A: Let's think step by step. 2+1=3. The answer is (B).",
                ),
            ],
        },
        MMLU_TEXT,
    ),
}


def render_chatml(messages):
    """The reference's rendering: a generation prompt, plus the prefill text when there is one."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if messages[-1]["role"] == "assistant":
        return out.removesuffix("<|im_end|>\n")
    return out + "<|im_start|>assistant\n"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_messages_render_to_the_reference_chat_text(name):
    example, expected = EXAMPLES[name]
    messages = get_task(name).messages(example)
    assert render_chatml(messages) == expected


def test_prefills_are_the_reference_ones():
    countdown = get_task("countdown").messages(EXAMPLES["countdown"][0])
    assert countdown[-1] == {
        "role": "assistant",
        "content": "Let me solve this step by step.\n<think>",
    }
    proofwriter = get_task("proofwriter").messages(EXAMPLES["proofwriter"][0])
    assert proofwriter[-1] == {"role": "assistant", "content": "Reasoning:"}
    for name in ("gsm8k", "hellaswag", "piqa", "arc_challenge", "mmlu_pro"):
        assert get_task(name).messages(EXAMPLES[name][0])[-1]["role"] == "user"


def test_stored_verl_prompt_is_used_as_is():
    example = {"numbers": [1, 2, 3], "target": "6", "prompt": [{"role": "user", "content": "hi"}]}
    assert get_task("countdown").messages(example) == [{"role": "user", "content": "hi"}]


# ----- tokenization helper ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers", reason="transformers is not installed")
    from tiny_model import make_tokenizer

    # A byte-level BPE trained here on a few prompt strings: real tokenizer code, no download.
    return make_tokenizer(
        [text for _, text in EXAMPLES.values()], vocab_size=500, chat_template=CHATML
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_prompt_ids_decode_to_the_reference_text(tokenizer, name):
    example, expected = EXAMPLES[name]
    ids = prompt_token_ids(get_task(name).messages(example), tokenizer)
    assert tokenizer.decode(ids) == expected
    # Tokenizing the reference's rendered text gives the same ids (no doubled special tokens).
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_encode_prompts_left_pads_with_an_explicit_mask(tokenizer):
    names = ["countdown", "piqa", "proofwriter"]
    conversations = [get_task(n).messages(EXAMPLES[n][0]) for n in names]
    lengths = [len(prompt_token_ids(c, tokenizer)) for c in conversations]
    assert len(set(lengths)) == 3
    # Pad with a token id that also occurs in the prompts: the mask must not come from values.
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    batch = encode_prompts(conversations, tokenizer, pad_id=im_start, pad_to_multiple_of=16)
    width = -(-max(lengths) // 16) * 16
    assert batch.ids.shape == batch.mask.shape == (3, width)
    assert batch.ids.dtype == np.int32 and batch.mask.dtype == np.bool_
    for row, (conversation, length) in enumerate(zip(conversations, lengths, strict=True)):
        assert batch.mask[row].sum() == length
        assert (
            not batch.mask[row, : width - length].any() and batch.mask[row, width - length :].all()
        )
        assert (batch.ids[row, : width - length] == im_start).all()
        assert batch.ids[row, width - length :].tolist() == prompt_token_ids(
            conversation, tokenizer
        )
    default = encode_prompts(conversations, tokenizer)
    assert default.ids.shape == (3, max(lengths))
    assert (default.ids[~default.mask] == tokenizer.pad_token_id).all()


def test_encode_prompts_refuses_to_truncate(tokenizer):
    conversation = get_task("piqa").messages(EXAMPLES["piqa"][0])
    with pytest.raises(ValueError, match="more than max_length=4"):
        encode_prompts([conversation], tokenizer, max_length=4)
    with pytest.raises(ValueError, match="at least one"):
        encode_prompts([], tokenizer)
