"""The tiny tokenizers: lossless, small, boxed answers in 3 tokens, and the real models' chat templates."""

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from justrl_jax.model.tiny_tokenizer import ChatStyle, generation_eos_ids, make_tiny_tokenizer, save_tiny_tokenizer

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
CONTENT = "Compute 3 + 4.\n\nPlease reason step by step, and put your final answer within \\boxed{}."

# The generation prompts as the real models' templates render one user message (recipe.md §3).
EXPECTED = {
    ChatStyle.DEEPSEEK: BOS + "<｜User｜>" + CONTENT + "<｜Assistant｜><think>\n",
    ChatStyle.CHATML: "<|im_start|>user\n" + CONTENT + "<|im_end|>\n<|im_start|>assistant\n",
}

TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nand more",
    "héllo wörld ß ∑_{i=1}^n i² — 你好, мир 🙂🧮",
    "Let $f(x) = \\frac{1}{2}x^2$. Find $f(4)$.  \\boxed{8}",
    "<think>\nreasoning</think> so \\boxed{\\text{(A)}}",
    "specials inside text: <|im_start|>x<|im_end|> " + BOS + "y" + EOS,
    "\\boxed{\\boxed{}}}}{{",
    "\x00\x01 control bytes \x7f",
]


@pytest.fixture(scope="module", params=list(ChatStyle), ids=lambda s: s.value)
def style_and_tokenizer(request):
    return request.param, make_tiny_tokenizer(request.param)


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips(style_and_tokenizer, text):
    _, tok = style_and_tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_vocab_is_small_and_ids_are_dense(style_and_tokenizer):
    _, tok = style_and_tokenizer
    assert 300 <= len(tok) <= 600
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))


def test_boxed_digit_answer_is_three_tokens_and_survives_skip_special(style_and_tokenizer):
    _, tok = style_and_tokenizer
    for digit in "0123456789":
        ids = tok(f"\\boxed{{{digit}}}", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == ["\\boxed{", digit, "}"]
    answer = tok("\\boxed{7}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(answer, skip_special_tokens=True) == "\\boxed{7}"


def test_generation_prompt_matches_the_real_template(style_and_tokenizer):
    style, tok = style_and_tokenizer
    messages = [{"role": "user", "content": CONTENT}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == EXPECTED[style]
    # transformers 5: tokenize=True gives a dict; it must not add a second bos on top of the template's.
    encoded = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert list(encoded["input_ids"]) == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(encoded["input_ids"]) == text


def test_multi_turn_rendering():
    ds = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nhidden</think>a1"},
        {"role": "user", "content": "q2"},
    ]
    # DeepSeek: system prompt right after the bos; earlier reasoning dropped; no generation prompt asked.
    expected = BOS + "SYS<｜User｜>q1<｜Assistant｜>a1" + EOS + "<｜User｜>q2"
    assert ds.apply_chat_template(messages, tokenize=False) == expected
    qwen = make_tiny_tokenizer(ChatStyle.CHATML)
    assert qwen.apply_chat_template(messages[:2], tokenize=False) == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n"
    )


def test_special_tokens_and_left_padding():
    ds = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    assert (ds.bos_token, ds.eos_token, ds.pad_token) == (BOS, EOS, EOS)  # as DeepSeek-R1-Distill: pad == eos
    # Like the real DeepSeek tokenizer, plain tokenization prepends the bos (hence add_special_tokens=False).
    assert ds("hi")["input_ids"] == [ds.bos_token_id] + ds("hi", add_special_tokens=False)["input_ids"]
    qwen = make_tiny_tokenizer(ChatStyle.CHATML)
    assert (qwen.bos_token, qwen.eos_token, qwen.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    assert qwen("hi")["input_ids"] == qwen("hi", add_special_tokens=False)["input_ids"]
    assert generation_eos_ids(ChatStyle.CHATML, qwen) == (
        qwen.convert_tokens_to_ids("<|im_end|>"),
        qwen.convert_tokens_to_ids("<|endoftext|>"),
    )
    assert generation_eos_ids(ChatStyle.DEEPSEEK, ds) == (ds.eos_token_id,)
    for tok in (ds, qwen):
        assert tok.padding_side == "left"
        padded = tok(["a", "abc def"], add_special_tokens=False, padding=True)
        short = tok("a", add_special_tokens=False)["input_ids"]
        width = len(padded["input_ids"][0])
        assert padded["input_ids"][0] == [tok.pad_token_id] * (width - len(short)) + short
        assert padded["attention_mask"][0] == [0] * (width - len(short)) + [1] * len(short)


def test_saved_tokenizer_loads_offline_with_auto_tokenizer(tmp_path, style_and_tokenizer):
    style, tok = style_and_tokenizer
    save_tiny_tokenizer(style, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": CONTENT}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == EXPECTED[style]
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id, loaded.padding_side) == (
        tok.pad_token_id,
        tok.eos_token_id,
        tok.bos_token_id,
        "left",
    )
    assert len(loaded) == len(tok)


def test_make_is_deterministic():
    a, b = make_tiny_tokenizer(ChatStyle.DEEPSEEK), make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    assert a.get_vocab() == b.get_vocab()
    assert a(TEXTS[5])["input_ids"] == b(TEXTS[5])["input_ids"]


def test_module_does_not_import_jax():
    code = "import sys, justrl_jax.model.tiny_tokenizer; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
