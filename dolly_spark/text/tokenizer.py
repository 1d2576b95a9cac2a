"""Tokenizer loading shared by gold tokenization (Spark workers), training and inference.

The source is a hub id (``EleutherAI/gpt-neox-20b``) or a local directory holding
``tokenizer.json``. ``DOLLY_TOKENIZER`` sets the default.
"""

from __future__ import annotations

import os
from pathlib import Path

from dolly_spark.text.prompts import DOLLY_SPECIAL_TOKENS, RESPONSE_KEY, RESPONSE_KEY_NL

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
HUB_HINT = (
    "Could not load tokenizer {src!r}: {err}. Offline, point --tokenizer (or the DOLLY_TOKENIZER "
    "environment variable) at a local directory with tokenizer.json, "
    "e.g. ../shared/data/tokenizer/gpt-neox-20b."
)


def default_tokenizer() -> str:
    return os.environ.get("DOLLY_TOKENIZER", DEFAULT_TOKENIZER)


def special_tokens_to_add(vocab) -> list[str]:
    """Dolly's keys, minus ``### Response:`` where ``### Response:\\n`` is already one token (a
    tokenizer saved by Dolly's current trainer): adding both would grow the vocabulary past Dolly's."""
    return [t for t in DOLLY_SPECIAL_TOKENS if not (t == RESPONSE_KEY and RESPONSE_KEY_NL in vocab)]


def load_fast_tokenizer(src: str):
    """A ``tokenizers.Tokenizer`` with Dolly's special tokens added (light: no transformers)."""
    from tokenizers import AddedToken, Tokenizer

    path = Path(src)
    try:
        if path.is_dir():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif path.is_file():
            tok = Tokenizer.from_file(str(path))
        else:
            tok = Tokenizer.from_pretrained(src)
    except Exception as err:  # hub errors vary by version; one clear message
        raise RuntimeError(HUB_HINT.format(src=src, err=err)) from err
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in special_tokens_to_add(tok.get_vocab())]
    )
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_hf_tokenizer(src: str):
    """A transformers tokenizer with Dolly's special tokens; pad is EOS (as in Dolly)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as err:
        raise RuntimeError(HUB_HINT.format(src=src, err=err)) from err
    tok.add_special_tokens({"additional_special_tokens": special_tokens_to_add(tok.get_vocab())})
    tok.pad_token = tok.eos_token
    return tok
