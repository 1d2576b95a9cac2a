"""Candidate blocking for short records (see docs/dedup.md, "Finding the candidates").

Word-bigram MinHash misses one-edit copies of short records (a 9-word instruction with one word
substituted keeps a bigram Jaccard of 0.6), so records whose counted fields all have at most
``max_words`` tokens also get exact keys that every pair within one edit per field shares: one
key per combination of a key of each field (the first field's deletion neighbourhood, the other
fields' halves, at most 4 each). The
decision itself is ``dedup_edit.near_duplicate``; this only proposes pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from dolly_spark.prep.dedup_edit import edit_budget, tokens
from dolly_spark.prep.minhash import distinct_per_row, mix64


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


# Odd multipliers, one per field position, combining the fields' key hashes into a record key.
_FIELD_COEF = np.random.default_rng(0x5107).integers(1, 1 << 63, size=16, dtype=np.uint64) | np.uint64(1)


def _field_key_sets(fields: list[str], max_words: int, min_edits: int, rate: float, exact_below: int):
    """Per field, its distinct keys (a repeated token gives the same deletion twice); None for a
    record with a field over ``max_words`` tokens."""
    words = [tokens(f) for f in fields]
    if any(len(w) > max_words for w in words):
        return None
    per_field = [first_field_keys(words[0], min_edits, rate, exact_below)]
    per_field += [field_keys(w, min_edits, rate, exact_below) for w in words[1:]]
    return [list(set(k)) for k in per_field]


def records_keys(
    records: list[list[str]], max_words: int, min_edits: int, rate: float, exact_below: int
) -> list[np.ndarray]:
    """Per record (its counted fields), the sorted distinct 64-bit keys: one per combination of a
    key of each field; none for a record with a longer field (MinHash LSH finds those).

    A field key is hashed once for the batch (pandas' SipHash); a combination's key is a
    position-weighted sum of its fields' hashes, mixed: no string per combination.
    """
    n, nf = len(records), len(records[0]) if records else 0
    sets = [_field_key_sets(r, max_words, min_edits, rate, exact_below) for r in records]
    counts = np.array([[len(k) for k in s] if s else [0] * nf for s in sets], dtype=np.int64).reshape(n, nf)
    flat = [k for s in sets if s for keys in s for k in keys]
    hashes = pd.util.hash_array(np.array(flat, dtype=object)) if flat else np.zeros(0, dtype=np.uint64)
    combos = counts.prod(axis=1)
    row = np.repeat(np.arange(n), combos)
    local = np.arange(len(row)) - (np.cumsum(combos) - combos)[row]
    offsets = (np.cumsum(counts.ravel()) - counts.ravel()).reshape(n, nf)
    acc = np.zeros(len(row), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(nf - 1, -1, -1):  # mixed radix: the last field varies fastest
            acc += hashes[offsets[row, j] + local % counts[row, j]] * _FIELD_COEF[j]
            local //= counts[row, j]
    # distinct: a record twice in one bucket would pair with itself
    return distinct_per_row(mix64(acc).view(np.int64), row, combos, n)


def record_keys(fields: list[str], max_words: int, min_edits: int, rate: float, exact_below: int) -> list[int]:
    """``records_keys`` of one record, as a list."""
    return records_keys([fields], max_words, min_edits, rate, exact_below)[0].tolist()


def _short_key_udf(max_words: int, min_edits: int, rate: float, exact_below: int):
    @pandas_udf("array<long>")
    def keys(*texts: pd.Series) -> pd.Series:
        rows = [list(r) for r in zip(*(t.tolist() for t in texts))]
        return pd.Series(records_keys(rows, max_words, min_edits, rate, exact_below))

    return keys


def short_record_buckets(
    shingled: DataFrame, text_columns: list[str], max_words: int, min_edits: int, rate: float, exact_below: int
) -> DataFrame:
    """``record_id, band, bucket`` (band -1) for records whose fields all have at most
    ``max_words`` tokens: a pair within one edit per field shares a bucket."""
    keys = _short_key_udf(max_words, min_edits, rate, exact_below)(*[F.col(c) for c in text_columns])
    return shingled.select("record_id", F.lit(-1).alias("band"), F.explode(keys).alias("bucket"))
