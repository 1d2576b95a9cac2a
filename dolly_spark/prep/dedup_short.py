"""Candidate blocking for short records (see docs/dedup.md, "Finding the candidates").

Word-bigram MinHash misses one-edit copies of short records (a 9-word instruction with one word
substituted keeps a bigram Jaccard of 0.6), so records whose counted fields all have at most
``max_words`` tokens also get exact keys that every pair within one edit per field shares: one
key per combination of a key of each field (the first field's deletion neighbourhood, the other
fields' halves, at most 4 each). The
decision itself is ``dedup_edit.near_duplicate``; this only proposes pairs.
"""

from __future__ import annotations

import hashlib
import itertools

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from dolly_spark.prep.dedup_edit import edit_budget, tokens


def field_keys(words: list[str], min_edits: int, rate: float, exact_below: int) -> list[str]:
    """Keys of one field such that two fields within one edit share at least one.

    For a pair with shorter length m, one edit leaves the first m // 2 tokens or the last
    m - m // 2 tokens of the shorter side intact in the longer one (a substitution, insertion or
    deletion sits in one half). A field of n tokens may be the shorter side (m = n) or the longer
    (m = n - 1, when n tokens allow an edit), so it emits both halves for both m.
    """
    n = len(words)
    budget = edit_budget
    if budget(n, min_edits, rate, exact_below) == 0 and budget(n + 1, min_edits, rate, exact_below) == 0:
        return ["=" + " ".join(words)]  # no partner may differ: the field itself
    ms = [n] + ([n - 1] if budget(n, min_edits, rate, exact_below) >= 1 else [])
    out = []
    for m in ms:
        h = m // 2
        out.append(f"P{m}|" + " ".join(words[:h]))
        out.append(f"S{m}|" + " ".join(words[n - (m - h) :]))
    return out


NEIGHBOURHOOD_WORDS = 32  # first fields up to this long use the deletion-neighbourhood keys


def neighbourhood_keys(words: list[str], min_edits: int, rate: float, exact_below: int) -> list[str]:
    """Keys of one field: the field itself and, when its length allows an edit, each copy with one
    token deleted. Two fields within one edit share one exactly (a substitution at position i:
    both without token i; an insertion: the longer without it is the shorter), so these keys are
    far more selective than the halves, at n + 1 keys per field."""
    n = len(words)
    if edit_budget(n, min_edits, rate, exact_below) == 0 and edit_budget(n + 1, min_edits, rate, exact_below) == 0:
        return ["=" + " ".join(words)]
    out = ["D" + " ".join(words)]
    if edit_budget(n, min_edits, rate, exact_below) >= 1:
        out += ["D" + " ".join(words[:i] + words[i + 1 :]) for i in range(n)]
    return out


def first_field_keys(words: list[str], min_edits: int, rate: float, exact_below: int) -> list[str]:
    """The first counted field (the instruction): neighbourhood keys when the shorter side of a pair
    has at most NEIGHBOURHOOD_WORDS tokens, halves above; a field one token over emits both, since
    it may be the longer side of either kind of pair."""
    n = len(words)
    out = neighbourhood_keys(words, min_edits, rate, exact_below) if n <= NEIGHBOURHOOD_WORDS + 1 else []
    return out + (field_keys(words, min_edits, rate, exact_below) if n > NEIGHBOURHOOD_WORDS else [])


def record_keys(fields: list[str], max_words: int, min_edits: int, rate: float, exact_below: int) -> list[int]:
    """64-bit keys of a record whose fields are all short: one per combination of field keys; none
    for a record with a longer field (MinHash LSH finds those)."""
    words = [tokens(f) for f in fields]
    if any(len(w) > max_words for w in words):
        return []
    per_field = [first_field_keys(words[0], min_edits, rate, exact_below)]
    per_field += [field_keys(w, min_edits, rate, exact_below) for w in words[1:]]
    # distinct: a repeated token gives the same deletion twice, and a record twice in one bucket
    # would pair with itself
    return sorted(
        {
            int.from_bytes(hashlib.blake2b("\u241e".join(c).encode(), digest_size=8).digest(), "big", signed=True)
            for c in itertools.product(*per_field)
        }
    )


def _short_key_udf(max_words: int, min_edits: int, rate: float, exact_below: int):
    @pandas_udf("array<long>")
    def keys(*texts: pd.Series) -> pd.Series:
        rows = zip(*(t.tolist() for t in texts))
        return pd.Series([record_keys(list(r), max_words, min_edits, rate, exact_below) for r in rows])

    return keys


def short_record_buckets(
    shingled: DataFrame, text_columns: list[str], max_words: int, min_edits: int, rate: float, exact_below: int
) -> DataFrame:
    """``record_id, band, bucket`` (band -1) for records whose fields all have at most
    ``max_words`` tokens: a pair within one edit per field shares a bucket."""
    keys = _short_key_udf(max_words, min_edits, rate, exact_below)(*[F.col(c) for c in text_columns])
    return shingled.select("record_id", F.lit(-1).alias("band"), F.explode(keys).alias("bucket"))
