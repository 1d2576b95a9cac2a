"""The short-field rule of near-duplicate detection (see docs/dedup.md, "Short fields").

Word-bigram Jaccard punishes one changed word hard in a short field (a 9-word instruction with
one substitution scores 0.6), so short fields may instead pass by a word-substitution budget,
and records whose fields are all short get their own blocking, since LSH on the whole text
misses them. A slot change (the same word replaced in two fields) is never a duplicate.
"""

from __future__ import annotations

import hashlib
import itertools

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf


def _substitutions(a: str, b: str) -> list[tuple[str, str]] | None:
    """The (old, new) word pairs that differ position by position, or None when the texts do not
    have the same word count."""
    wa, wb = (a or "").split(" "), (b or "").split(" ")
    if len(wa) != len(wb):
        return None
    return [(x, y) for x, y in zip(wa, wb) if x != y]


def within_substitution_budget(a_fields: list[str], b_fields: list[str], max_words: int, rate: float) -> list[bool]:
    """Per field: the same word count n <= ``max_words`` and at most floor(rate * n) words
    substituted (none for n * rate < 1); then one more flag, True when the pair is a *slot change*:
    the same word replaced in two fields ("chocolate" -> "avocado" in the question and in its
    answer), which makes it a different question whatever its similarity."""
    subs = [_substitutions(a, b) for a, b in zip(a_fields, b_fields)]
    ok = [
        s is not None and len((a or "").split(" ")) <= max_words and len(s) <= int(len((a or "").split(" ")) * rate)
        for s, a in zip(subs, a_fields)
    ]
    # A word replaced in two fields (its old or its new form: "chocolate -> avacado" in the
    # question, "chocolate -> avocado" in the answer, typos included).
    seen: dict[str, int] = {}
    slot = False
    for i, s in enumerate(subs):
        for word in {w for pair in s or [] for w in (f"old:{pair[0]}", f"new:{pair[1]}")}:
            slot = slot or seen.get(word, i) != i
            seen.setdefault(word, i)
    return ok + [slot]


def budget_udf(max_words: int, rate: float, n_fields: int):
    # A pandas UDF: Sail has no zip_with. It runs on candidate pairs only (few rows).
    @pandas_udf("array<boolean>")
    def budget(*texts: pd.Series) -> pd.Series:
        cols = [t.tolist() for t in texts]
        rows = zip(zip(*cols[:n_fields]), zip(*cols[n_fields:]))
        return pd.Series([within_substitution_budget(list(a), list(b), max_words, rate) for a, b in rows])

    return budget


def _short_key_udf(max_words: int, rate: float):
    def variants(text: str) -> list[str] | None:
        words = text.split(" ") if text else []
        n = len(words)
        if n > max_words:
            return None
        k = int(n * rate)  # substitutions allowed; with k of them, one of k+1 segments is intact
        if k == 0:
            return [f"{n}|{text}"]
        cuts = [round(j * n / (k + 1)) for j in range(k + 2)]
        return [f"{n}|{j}|{' '.join(words[cuts[j] : cuts[j + 1]])}" for j in range(k + 1)]

    @pandas_udf("array<long>")
    def keys(*texts: pd.Series) -> pd.Series:
        out = []
        for row in zip(*(t.tolist() for t in texts)):
            per_field = [variants(t or "") for t in row]
            if any(v is None for v in per_field):
                out.append([])  # a long field: whole-text LSH finds these
                continue
            out.append(
                [
                    int.from_bytes(
                        hashlib.blake2b("\u241e".join(combo).encode(), digest_size=8).digest(), "big", signed=True
                    )
                    for combo in itertools.product(*per_field)
                ]
            )
        return pd.Series(out)

    return keys


def short_record_buckets(shingled: DataFrame, text_columns: list[str], max_words: int, rate: float) -> DataFrame:
    """Blocking for records whose fields are all short, where LSH on bigrams misses one-word
    substitutions: ``record_id, band, bucket`` with band -1. Each field is cut into k+1
    segments (k = its substitution budget), so a pair within budget shares an intact segment in
    every field, hence one key of the product (at most (k+1) per field; fields are short)."""
    keys = _short_key_udf(max_words, rate)(*[F.col(c) for c in text_columns])
    return shingled.select("record_id", F.lit(-1).alias("band"), F.explode(keys).alias("bucket"))
