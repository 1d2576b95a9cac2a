"""Batched generation: order, stop at ### End, length finish, too-long prompts, batch == single."""

import pytest
import torch

from dolly_spark.serve.generate import GenerationConfig, generate_one_at_a_time, generate_responses, special_token_id
from dolly_spark.text.prompts import END_KEY, format_prompt
from dolly_spark.text.tokenizer import load_hf_tokenizer
from tests.shared_data import TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    tok.padding_side = "left"
    return tok


def tiny_model(tokenizer, max_positions=256):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    return GPTNeoXForCausalLM(cfg).eval()


def force_constant_token(model, token_id: int) -> None:
    """Make greedy decoding emit ``token_id`` at every step, whatever the input."""
    with torch.no_grad():
        ln = model.gpt_neox.final_layer_norm
        ln.weight.zero_()
        ln.bias.zero_()
        ln.bias[0] = 1.0  # constant hidden state e_0
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[token_id, 0] = 10.0


def test_stops_at_end_key_and_hides_it(tokenizer):
    model = tiny_model(tokenizer)
    end_id = special_token_id(tokenizer, END_KEY)
    force_constant_token(model, end_id)
    out = generate_responses(model, tokenizer, ["Say hi", "Name a color"], ["", "ctx"], GenerationConfig(greedy=True))
    for r in out:
        assert r["finish_reason"] == "end_key"
        assert r["response"] == ""
        assert END_KEY not in r["response"]
        assert r["completion_tokens"] == 1
        assert r["error"] is None
    assert out[0]["prompt_tokens"] == len(tokenizer.encode(format_prompt("Say hi"), add_special_tokens=False))
    assert out[1]["prompt_tokens"] == len(
        tokenizer.encode(format_prompt("Name a color", "ctx"), add_special_tokens=False)
    )


def test_runs_to_length_without_end_key(tokenizer):
    model = tiny_model(tokenizer)
    hello = tokenizer.encode(" hello", add_special_tokens=False)[0]
    force_constant_token(model, hello)
    out = generate_responses(
        model,
        tokenizer,
        ["a", "a much longer instruction than the other one"],
        cfg=GenerationConfig(greedy=True, max_new_tokens=5),
    )
    for r in out:
        assert r["finish_reason"] == "length"
        assert r["completion_tokens"] == 5
        assert r["response"] == "hello hello hello hello hello"


def test_batched_equals_one_at_a_time_in_input_order(tokenizer):
    model = tiny_model(tokenizer)
    instructions = ["short", "a somewhat longer instruction here", "mid length one", "x"]
    contexts = [None, "some context text", "", None]
    cfg = GenerationConfig(greedy=True, max_new_tokens=6, batch_size=3)
    batched = generate_responses(model, tokenizer, instructions, contexts, cfg)
    single = generate_one_at_a_time(model, tokenizer, instructions, contexts, cfg)
    assert [r["prompt_tokens"] for r in batched] == [r["prompt_tokens"] for r in single]
    assert [r["response"] for r in batched] == [r["response"] for r in single]


def test_bad_rows_get_an_error_not_an_exception(tokenizer):
    model = tiny_model(tokenizer, max_positions=64)
    out = generate_responses(
        model, tokenizer, ["ok", "", "word " * 200], cfg=GenerationConfig(greedy=True, max_new_tokens=3)
    )
    assert out[0]["error"] is None and out[0]["response"] is not None
    assert out[1]["error"] == "empty_instruction"
    assert out[2]["error"].startswith("prompt_too_long") and out[2]["response"] is None
