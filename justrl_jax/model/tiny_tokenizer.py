"""Tiny offline tokenizers that behave like the real models' tokenizers, for tests and the CPU demo.

The two JustRL models use Qwen2's byte-level BPE with different chat templates. A tiny stand-in
must keep the properties the pipeline relies on, so tests exercise the same code paths:

* byte-level BPE, so any text round-trips (``decode(encode(s)) == s``) and the vocabulary stays
  small (256 byte symbols, ~170 merges of common prompt words, a few added tokens: ~440 in all);
* ``\\boxed{`` is one token and digits and ``}`` are single bytes, so a tiny model can write a
  boxed single-digit answer in three tokens;
* a real jinja ``chat_template``, rendered by ``apply_chat_template`` exactly as the real one:

  - ``ChatStyle.DEEPSEEK`` (DeepSeek-R1-Distill-Qwen):
    ``<｜begin▁of▁sentence｜><｜User｜>{content}<｜Assistant｜><think>\\n``. As in the real tokenizer,
    ``tokenizer(text)`` also prepends the bos and pad == eos, so callers must tokenize templated
    text with ``add_special_tokens=False`` (as verl does) and track padding with a mask, not the id.
  - ``ChatStyle.CHATML`` (Qwen / OpenMath-Nemotron):
    ``<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n``; no bos, no default system
    prompt; eos ``<|im_end|>``, pad ``<|endoftext|>`` (which generation also treats as an eos).

Example::

    tok = make_tiny_tokenizer(ChatStyle.DEEPSEEK)
    text = tok.apply_chat_template([{"role": "user", "content": "1+1?"}], add_generation_prompt=True,
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOXED_TOKEN = "\\boxed{"


class ChatStyle(enum.Enum):
    """Which real model's chat template and special tokens the tiny tokenizer mirrors."""

    DEEPSEEK = "deepseek"
    CHATML = "chatml"


@dataclasses.dataclass(frozen=True)
class StyleSpec:
    """Special tokens and template of one chat style."""

    bos: str | None
    eos: str
    pad: str
    generation_eos: tuple[str, ...]  # what generation_config.json would list as eos_token_id
    special: tuple[str, ...]  # control tokens, removed by decode(skip_special_tokens=True)
    plain_added: tuple[str, ...]  # added tokens that are ordinary text (kept by skip_special_tokens)
    chat_template: str


# Jinja, the dialect HF renders with (trim_blocks/lstrip_blocks). Like the current HF revision of
# DeepSeek-R1-Distill: an optional system prompt right after the bos, no role separators, the
# reasoning of earlier assistant turns dropped, and a generation prompt that opens <think>.
_DEEPSEEK_TEMPLATE = (
    "{%- set ns = namespace(system_prompt='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system_prompt = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system_prompt -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' -}}"
    "{%- elif message['role'] != 'system' -%}"
    "{{- raise_exception('unsupported chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜><think>\\n' -}}{%- endif -%}"
)

_CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

STYLES: dict[ChatStyle, StyleSpec] = {
    ChatStyle.DEEPSEEK: StyleSpec(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>",
        generation_eos=("<｜end▁of▁sentence｜>",),
        special=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        plain_added=("<think>", "</think>", BOXED_TOKEN),
        chat_template=_DEEPSEEK_TEMPLATE,
    ),
    ChatStyle.CHATML: StyleSpec(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        plain_added=(BOXED_TOKEN,),
        chat_template=_CHATML_TEMPLATE,
    ),
}

# Words that get whole-word tokens, so templated prompts are a realistic ~2-4 characters per token.
# Each word contributes the merges that build it left to right; the byte alphabet keeps the rest
# lossless whatever the merges do.
_WORDS = (
    "Please",
    " reason",
    " step",
    " by",
    " and",
    " put",
    " your",
    " final",
    " answer",
    " within",
    " the",
    " of",
    " is",
    " to",
    " in",
    " that",
    " be",
    " a",
    " an",
    " for",
    " with",
    " are",
    " Compute",
    " Find",
    " Let",
    " What",
    " How",
    " many",
    " number",
    " sum",
    " value",
    " integer",
    " positive",
    " real",
    " such",
    " if",
    " then",
    " so",
    " we",
    " Solve",
    " following",
    " math",
    " problem",
    " \\frac",
    " \\cdot",
    " =",
    " +",
    "Compute",
    "Find",
    "What",
    "How",
    "Let",
    "Solve",
    "user",
    "assistant",
    "system",
)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel BPE uses)."""
    # Printable Latin-1 bytes stand for themselves; the rest (space, controls) move past 255.
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    alphabet = _byte_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = "".join(alphabet[b] for b in word.encode("utf-8"))
        for end in range(2, len(symbols) + 1):
            if symbols[:end] not in vocab:
                merges.append((symbols[: end - 1], symbols[end - 1]))
                vocab[symbols[:end]] = len(vocab)
    return vocab, merges


def _backend(spec: StyleSpec) -> Tokenizer:
    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.plain_added])
    if spec.bos is not None:
        # Like DeepSeek's tokenizer (add_bos_token): plain tokenizer(text) prepends the bos.
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    return tok


def make_tiny_tokenizer(style: ChatStyle) -> PreTrainedTokenizerFast:
    """A ~440-token byte-level tokenizer with ``style``'s special tokens and chat template (no download)."""
    spec = STYLES[ChatStyle(style)]
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(spec),
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.chat_template,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


def generation_eos_ids(style: ChatStyle, tokenizer: PreTrainedTokenizerFast) -> tuple[int, ...]:
    """The eos ids a real model of this style lists in generation_config.json."""
    return tuple(tokenizer.convert_tokens_to_ids(t) for t in STYLES[ChatStyle(style)].generation_eos)


def save_tiny_tokenizer(style: ChatStyle, directory: str | Path) -> PreTrainedTokenizerFast:
    """Saves the tokenizer (``save_pretrained``) so ``AutoTokenizer.from_pretrained`` loads it offline."""
    tokenizer = make_tiny_tokenizer(style)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
