"""Batched Dolly generation, shared by the MLflow pyfunc, batch scoring and evaluation.

Prompts are sorted by token length and generated in batches with left padding; each sequence
stops at ``### End`` (Dolly's stop token), which never appears in the returned text. No Spark here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.text.prompts import END_KEY, RESPONSE_KEY, format_prompt

log = logging.getLogger(__name__)

FINISH_END_KEY = "end_key"
FINISH_LENGTH = "length"


@dataclass
class GenerationConfig:
    """Dolly's sampling defaults (top_p 0.92, top_k 0, 256 new tokens), one set for score, evaluate
    and the served model; ``greedy`` for deterministic decoding."""

    max_new_tokens: int = field(default=256, metadata={"help": "most tokens generated per response"})
    top_p: float = field(default=0.92, metadata={"help": "nucleus sampling mass (Dolly: 0.92)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens (0: no limit, Dolly's)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    greedy: bool = field(default=False, metadata={"help": "deterministic greedy decoding (default: Dolly's sampling)"})
    batch_size: int = field(default=16, metadata={"help": "prompts generated together (length-sorted batches)"})
    seed: int | None = field(default=None, metadata={"help": "seed the sampler for reproducible responses"})

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.temperature <= 0:
            raise ValueError("need 0 < top_p <= 1, top_k >= 0 and temperature > 0")


def special_token_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{token!r} is not a single token in this tokenizer (got {ids}); "
            "load it with dolly_spark.text.tokenizer.load_hf_tokenizer"
        )
    return ids[0]


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_generation(model_dir: str | Path, device: str | None = None, trust_remote_code: bool = False):
    """Model (bf16 on GPU, fp32 on CPU; safetensors only) and its Dolly tokenizer, left-padded.

    ``model_dir`` is a saved model, or a LoRA adapter directory (``text.adapters``): its pinned
    base is loaded and the adapter merged in, so both forms generate the same way.
    """
    import torch

    from dolly_spark.text.adapters import is_adapter_dir, load_merged

    device = pick_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if is_adapter_dir(model_dir):
        model, tokenizer = load_merged(model_dir, torch_dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        model, tokenizer = _load_plain(model_dir, dtype, trust_remote_code)
    tokenizer.padding_side = "left"
    model.to(device).eval()
    return model, tokenizer


def _load_plain(model_dir: str | Path, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    from dolly_spark.ops.runtime import dtype_keyword
    from dolly_spark.text.tokenizer import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code, **{dtype_keyword(): dtype}
    )
    return model, tokenizer


def _context_window(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def generate_responses(
    model, tokenizer, instructions, contexts=None, cfg: GenerationConfig | None = None
) -> list[dict]:
    """One dict per instruction, in input order: response, prompt_tokens, completion_tokens,
    finish_reason (``end_key`` or ``length``) and error (None, or why the row was not generated)."""
    import torch

    cfg = cfg or GenerationConfig()
    instructions = list(instructions)
    contexts = list(contexts) if contexts is not None else [None] * len(instructions)
    if len(contexts) != len(instructions):
        raise ValueError("instructions and contexts differ in length")
    end_id = special_token_id(tokenizer, END_KEY)
    special_token_id(tokenizer, RESPONSE_KEY)  # fail early on a tokenizer without Dolly's keys
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    window = _context_window(model)
    device = next(model.parameters()).device

    results: list[dict | None] = [None] * len(instructions)
    encoded = []
    for i, (ins, ctx) in enumerate(zip(instructions, contexts)):
        if not isinstance(ins, str) or not ins.strip():
            results[i] = _failed(0, "empty_instruction")
            continue
        ids = tokenizer.encode(format_prompt(ins, ctx or None), add_special_tokens=False)
        if len(ids) >= window:
            results[i] = _failed(len(ids), f"prompt_too_long: {len(ids)} tokens >= context window {window}")
            continue
        encoded.append((i, ids))

    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    # Length-sorted batches waste little padding and keep per-batch max_new_tokens honest.
    encoded.sort(key=lambda item: len(item[1]))
    for batch in length_buckets(encoded, cfg.batch_size):
        width = max(len(ids) for _, ids in batch)
        max_new = max(1, min(cfg.max_new_tokens, window - width))
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids) in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        kwargs = dict(max_new_tokens=max_new, eos_token_id=end_id, pad_token_id=pad_id)
        if cfg.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, top_p=cfg.top_p, top_k=cfg.top_k, temperature=cfg.temperature)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        new_tokens = out[:, width:].tolist()
        for row, (i, ids) in enumerate(batch):
            results[i] = _decode(tokenizer, new_tokens[row], end_id, pad_id, len(ids))
    return results  # type: ignore[return-value]


def length_buckets(encoded: list, batch_size: int, slack: float = 2.0, min_spread: int = 64) -> list[list]:
    """Cut length-sorted ``(index, ids)`` pairs into batches of at most ``batch_size`` whose longest
    prompt is at most ``slack`` x (or ``min_spread`` tokens more than) its shortest: a single long
    prompt no longer pads a whole batch of short ones to its width, at every decode step."""
    batches: list[list] = []
    for item in encoded:
        n = len(item[1])
        if batches and len(batches[-1]) < max(1, batch_size):
            first = len(batches[-1][0][1])
            if n <= max(first * slack, first + min_spread):
                batches[-1].append(item)
                continue
        batches.append([item])
    return batches


def _decode(tokenizer, tokens: list[int], end_id: int, pad_id: int, prompt_tokens: int) -> dict:
    if end_id in tokens:
        tokens = tokens[: tokens.index(end_id)]
        finish = FINISH_END_KEY
    else:
        finish = FINISH_LENGTH
        # generate() pads finished rows; a row without ### End has no trailing pad of its own
        while tokens and tokens[-1] == pad_id:
            tokens = tokens[:-1]
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return {
        "response": text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens) + (1 if finish == FINISH_END_KEY else 0),
        "finish_reason": finish,
        "error": None,
    }


def _failed(prompt_tokens: int, error: str) -> dict:
    return {
        "response": None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 0,
        "finish_reason": None,
        "error": error,
    }


def generate_one_at_a_time(
    model, tokenizer, instructions, contexts=None, cfg: GenerationConfig | None = None
) -> list[dict]:
    """Dolly's original pipeline shape: one prompt per generate() call (the benchmark baseline)."""
    cfg = cfg or GenerationConfig()
    contexts = list(contexts) if contexts is not None else [None] * len(list(instructions))
    single = GenerationConfig(**{**cfg.__dict__, "batch_size": 1})
    out = []
    for ins, ctx in zip(instructions, contexts):
        out.extend(generate_responses(model, tokenizer, [ins], [ctx], single))
    return out
