"""Tokenizer loading shared by gold tokenization (Spark workers), training and inference.

The source is a hub id (``EleutherAI/gpt-neox-20b``) or a local directory holding
``tokenizer.json``. ``DOLLY_TOKENIZER`` sets the default.

Hub files go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, proxies), after one
short probe: an unreachable hub reads the cache only, so a missing tokenizer fails in seconds
with ``HUB_HINT`` instead of after the client's retries (five, with back-off: 23-31 s).
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


HUB_PROBE_SECONDS = 3.0


class TokenizerLoadError(RuntimeError):
    """A tokenizer that cannot be loaded (unreachable hub, missing or broken files): one line."""


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """One request to the hub's endpoint through the hub client's own session, no retries."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # DNS, refused, timeout, proxy, offline mode: all mean "not now"
        return False
    return True


def hub_offline_reason() -> str | None:
    """Why the hub cannot be asked now (offline mode, unreachable), or None when it can."""
    import huggingface_hub
    from huggingface_hub import constants

    is_offline = getattr(huggingface_hub, "is_offline_mode", None)  # older clients: the constant
    if is_offline() if is_offline else getattr(constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"{constants.ENDPOINT} is unreachable"
    return None


def _looks_like_a_path(src: str) -> bool:
    return src.startswith(("/", ".", "~")) or src.count("/") > 1  # a hub id is ORG/NAME


def hub_tokenizer_file(src: str) -> str:
    """``tokenizer.json`` of hub repo ``src``: downloaded (and cached) when the hub answers,
    else from the local cache."""
    from huggingface_hub import hf_hub_download

    if _looks_like_a_path(src):  # a missing local path: never worth asking the hub
        raise TokenizerLoadError(HUB_HINT.format(src=src, err="no such file or directory"))
    reason = hub_offline_reason()
    try:
        return hf_hub_download(src, "tokenizer.json", local_files_only=reason is not None)
    except Exception as err:
        why = f"{reason} and it is not in the local cache" if reason else _first_line(err)
        raise TokenizerLoadError(HUB_HINT.format(src=src, err=why)) from err


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


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
    if path.is_dir():
        path = path / "tokenizer.json"
    elif not path.is_file():
        path = Path(hub_tokenizer_file(src))
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # a missing or broken tokenizer.json: one clear message
        raise TokenizerLoadError(HUB_HINT.format(src=src, err=_first_line(err))) from err
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

    reason = None if Path(src).exists() or _looks_like_a_path(src) else hub_offline_reason()
    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=reason is not None)
    except Exception as err:
        saved_by = _saved_by(src) if Path(src).is_dir() else None
        if saved_by:
            import transformers

            raise TokenizerLoadError(
                f"tokenizer in {src} was saved by {saved_by} and does not load under transformers "
                f"{transformers.__version__}: {err}"
            ) from err
        why = f"{reason} and it is not in the local cache" if reason else _first_line(err)
        raise TokenizerLoadError(HUB_HINT.format(src=src, err=why)) from err
    tok.add_special_tokens({"additional_special_tokens": special_tokens_to_add(tok.get_vocab())})
    tok.pad_token = tok.eos_token
    return tok
