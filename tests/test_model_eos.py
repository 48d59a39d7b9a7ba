"""Generation stops on the union of generation_config.json's eos ids and the tokenizer's eos, as vLLM does."""

import json

from justrl_jax.model.source import eos_ids_of
from justrl_jax.model.tiny_tokenizer import ChatStyle, save_tiny_tokenizer


def _dir(tmp_path, style, generation_eos):
    tokenizer = save_tiny_tokenizer(style, tmp_path)
    if generation_eos is not None:
        ids = tokenizer.convert_tokens_to_ids(generation_eos)
        (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return tokenizer


def test_tokenizer_eos_is_added_to_the_generation_config_ids(tmp_path):
    # OpenMath-Nemotron's case: the generation config lists <|endoftext|>, the turn ends in <|im_end|>.
    tokenizer = _dir(tmp_path, ChatStyle.CHATML, ["<|endoftext|>"])
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert tokenizer.eos_token_id == im_end
    assert eos_ids_of(tmp_path) == (endoftext, im_end)


def test_no_duplicate_when_both_agree(tmp_path):
    tokenizer = _dir(tmp_path, ChatStyle.CHATML, ["<|im_end|>", "<|endoftext|>"])
    assert eos_ids_of(tmp_path) == tuple(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_tokenizer_alone(tmp_path):
    tokenizer = _dir(tmp_path, ChatStyle.DEEPSEEK, None)
    assert eos_ids_of(tmp_path) == (tokenizer.eos_token_id,)
