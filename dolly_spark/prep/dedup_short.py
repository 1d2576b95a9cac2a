"""Candidate blocking for short records (see docs/dedup.md, "Finding the candidates").

Word-bigram MinHash misses one-edit copies of short records (a 9-word instruction with one word
substituted keeps a bigram Jaccard of 0.6), so records whose counted fields all have at most
``max_words`` tokens also get exact keys that every pair within one edit per field shares: one
key per combination of a key of each field (the first field's deletion neighbourhood, the other
fields' halves, at most 4 each). The
decision itself is ``dedup_edit.near_duplicate``; this only proposes pairs.

``field_keys`` and ``neighbourhood_keys`` define the keys as strings; ``columns_keys`` computes the
same keys as hashes from Arrow columns (what the pipeline runs), tested against the strings.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from dolly_spark.prep.dedup_edit import edit_budget, tokens
from dolly_spark.prep.minhash import distinct_per_row, mix64, string_hashes


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
    key of each field (``_field_key_sets``); none for a record with a longer field (MinHash LSH
    finds those). ``columns_keys`` on the fields as Arrow columns."""
    columns = [pa.array([r[j] for r in records], pa.string()) for j in range(len(records[0]) if records else 0)]
    return columns_keys(columns, max_words, min_edits, rate, exact_below) if columns else []


# The field keys above, computed as hashes in numpy instead of strings: a key is its kind, its m
# and the polynomial hash of its tokens (sum of token_hash * BASE^position, mod 2^64), so a span
# or a one-token deletion is two prefix sums, and no key string is built. Two keys are equal when
# their strings are (collisions only add candidate pairs, which the decision then rejects).
_BASE = 0x9E3779B97F4A7C15  # odd: invertible mod 2^64
_KINDS = {"=": 1, "D": 2, "P": 3, "S": 4}


@functools.cache
def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^n mod 2^64."""
    return np.array([pow(base, k, 1 << 64) for k in range(n + 1)], dtype=np.uint64)


def _token_lists(column: pa.Array) -> tuple[np.ndarray, pa.ListArray]:
    """Per row its token count (``dedup_edit.tokens``: Arrow's whitespace is Python's) and its
    tokens; an empty text has none."""
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(column, ""))
    empty = pc.equal(trimmed, "").to_numpy(zero_copy_only=False)
    words = pc.utf8_split_whitespace(trimmed)
    return np.where(empty, 0, pc.list_value_length(words).to_numpy()).astype(np.int64), words


def _token_hashes(words: pa.ListArray, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The 64-bit hashes of the tokens of ``rows`` (those with ``counts`` > 0), row after row."""
    keep = rows[counts[rows] > 0]  # an empty text splits into one "": not a token
    return string_hashes(pc.list_flatten(words.take(pa.array(keep, pa.int64()))))


class _Spans:
    """Polynomial hashes of token spans and one-token deletions of each row's tokens."""

    def __init__(self, counts: np.ndarray, hashes: np.ndarray, max_words: int):
        self.n, self.start = counts, np.cumsum(counts) - counts
        self.pw, self.inv = _powers(_BASE, max_words + 1), _powers(pow(_BASE, -1, 1 << 64), max_words + 1)
        pos = np.arange(len(hashes)) - np.repeat(self.start, counts)
        self.prefix = np.zeros(len(hashes) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(hashes * self.pw[pos], out=self.prefix[1:])

    def span(self, rows, lo, hi) -> np.ndarray:
        """Hash of tokens [lo, hi) of each row, as if they started at position 0."""
        o = self.start[rows]
        with np.errstate(over="ignore"):
            return (self.prefix[o + hi] - self.prefix[o + lo]) * self.inv[lo]

    def deletions(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """Each row's n one-token deletions: (row per key, hash of the n - 1 tokens left)."""
        rep = np.repeat(rows, self.n[rows])
        i = np.arange(len(rep)) - np.repeat(np.cumsum(self.n[rows]) - self.n[rows], self.n[rows])
        o, end = self.start[rep], self.start[rep] + self.n[rep]
        with np.errstate(over="ignore"):
            left = self.prefix[o + i] - self.prefix[o]
            return rep, left + (self.prefix[end] - self.prefix[o + i + 1]) * self.inv[1]


def _key(kind: str, m, length, span: np.ndarray) -> np.ndarray:
    tag = (np.uint64(_KINDS[kind]) << np.uint64(40)) | (np.asarray(m, np.uint64) << np.uint64(20))
    return mix64(span ^ mix64(tag | np.asarray(length, np.uint64)))


def _halves_keys(sp: _Spans, rows: np.ndarray, eq: np.ndarray, can_edit: np.ndarray):
    """``field_keys`` of ``rows``: the whole field when no partner may differ, else both halves
    for m = n and, when n allows an edit, m = n - 1."""
    n = sp.n[rows]
    out = [(rows[eq], _key("=", 0, n[eq], sp.span(rows[eq], 0, n[eq])))]
    for shrink in (0, 1):
        pick = ~eq & (can_edit if shrink else True)
        r, nn = rows[pick], n[pick]
        m = nn - shrink
        h = m // 2
        out.append((r, _key("P", m, h, sp.span(r, 0, h))))
        out.append((r, _key("S", m, m - h, sp.span(r, nn - (m - h), nn))))
    return out


def _neighbourhood_keys(sp: _Spans, rows: np.ndarray, eq: np.ndarray, can_edit: np.ndarray):
    """``neighbourhood_keys`` of ``rows``: the field itself, and each one-token deletion."""
    n = sp.n[rows]
    whole = sp.span(rows, 0, n)
    out = [(rows[eq], _key("=", 0, n[eq], whole[eq])), (rows[~eq], _key("D", 0, n[~eq], whole[~eq]))]
    rep, dels = sp.deletions(rows[~eq & can_edit])
    out.append((rep, _key("D", 0, sp.n[rep] - 1, dels)))
    return out


def columns_keys(
    columns: list[pa.Array], max_words: int, min_edits: int, rate: float, exact_below: int
) -> list[np.ndarray]:
    """``records_keys`` of each row of ``columns`` (one Arrow array per counted field), from token
    hashes in numpy: the same key sets, as hashes, with no Python string per token or key."""
    columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    n_rows, nf = len(columns[0]), len(columns)
    fields = [_token_lists(c) for c in columns]
    is_short = np.all([counts <= max_words for counts, _ in fields], axis=0)
    short = np.flatnonzero(is_short)
    budget = np.array([edit_budget(k, min_edits, rate, exact_below) for k in range(max_words + 2)])
    row_of, field_of, keys = [], [], []
    for j, (counts, words) in enumerate(fields):
        # Only the short records' tokens are hashed: most of the text is in the long ones.
        sp = _Spans(np.where(is_short, counts, 0), _token_hashes(words, short, counts), max_words)
        n = counts[short]
        eq, can_edit = (budget[n] == 0) & (budget[n + 1] == 0), budget[n] >= 1
        if j == 0:
            nb, halves = n <= NEIGHBOURHOOD_WORDS + 1, n > NEIGHBOURHOOD_WORDS
            parts = _neighbourhood_keys(sp, short[nb], eq[nb], can_edit[nb])
            parts += _halves_keys(sp, short[halves], eq[halves], can_edit[halves])
        else:
            parts = _halves_keys(sp, short, eq, can_edit)
        for r, k in parts:
            row_of.append(r)
            field_of.append(np.full(len(r), j))
            keys.append(k)
    row, field_ = np.concatenate(row_of), np.concatenate(field_of)
    order = np.lexsort((field_, row))  # by record, then field
    counts = np.bincount(row * nf + field_, minlength=n_rows * nf).reshape(n_rows, nf)
    return _combinations(counts, np.concatenate(keys)[order], n_rows)


def _combinations(counts: np.ndarray, hashes: np.ndarray, n: int) -> list[np.ndarray]:
    """Per record, the distinct keys of every combination of one key per field: ``counts`` (n x
    fields) keys each, ``hashes`` in record-then-field order. A combination's key is a
    position-weighted sum of its fields' key hashes, mixed: no string per combination."""
    nf = counts.shape[1]
    combos = np.where(counts.min(axis=1) > 0, counts.prod(axis=1), 0)
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
