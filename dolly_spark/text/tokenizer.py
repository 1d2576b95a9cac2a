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


SAVED_BY_KEY = "dolly_saved_by"


def save_portable_tokenizer(tok, directory) -> None:
    """``save_pretrained`` in a form every supported transformers release reads: transformers 5
    writes ``extra_special_tokens`` as a list and a ``GPTNeoXTokenizer`` class that 4.51 cannot
    load, so the config keeps the long-standing keys, and names the release that saved it."""
    import json

    import transformers

    tok.save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = sorted(set(config.get("additional_special_tokens") or []) | set(extra))
    elif isinstance(extra, dict) and extra:
        config["extra_special_tokens"] = extra  # the 4.x form: kept as written
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # tokenizer.json holds the whole pipeline
    config[SAVED_BY_KEY] = f"transformers {transformers.__version__}"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _saved_by(src: str) -> str | None:
    import json

    try:
        return json.loads((Path(src) / "tokenizer_config.json").read_text()).get(SAVED_BY_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def load_hf_tokenizer(src: str):
    """A transformers tokenizer with Dolly's special tokens; pad is EOS (as in Dolly)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as err:
        saved_by = _saved_by(src) if Path(src).is_dir() else None
        if saved_by:
            import transformers

            raise RuntimeError(
                f"tokenizer in {src} was saved by {saved_by} and does not load under transformers "
                f"{transformers.__version__}: {err}"
            ) from err
        raise RuntimeError(HUB_HINT.format(src=src, err=err)) from err
    tok.add_special_tokens({"additional_special_tokens": special_tokens_to_add(tok.get_vocab())})
    tok.pad_token = tok.eos_token
    return tok
