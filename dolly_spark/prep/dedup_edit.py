"""The near-duplicate decision (docs/dedup.md, "Definition"): token-level edit distance per field.

LSH and the short-record blocking only propose candidate pairs; this module decides. Two records
are copies when every counted field is within its edit budget of the other record's field, and
the pair is not a slot change. Pure Python on token lists: it runs on candidate pairs only.
"""

from __future__ import annotations

import difflib
import itertools
import math

import pandas as pd
from pyspark.sql.functions import pandas_udf


def edit_budget(n: int, min_edits: int, rate: float, exact_below: int) -> int:
    """Edits allowed in a field whose longer side has ``n`` tokens: max(min_edits, floor(rate * n)),
    and none below ``exact_below`` tokens (a one- or two-word answer is the answer itself)."""
    if n < exact_below:
        return 0
    return max(min_edits, math.floor(n * rate + 1e-9))


def levenshtein_within(a: list[str], b: list[str], k: int) -> int:
    """Token-level Levenshtein distance of ``a`` and ``b`` when it is at most ``k``, else ``k + 1``.

    Banded dynamic programme: only cells within ``k`` of the diagonal can stay within budget, so
    a row holds 2k + 1 cells (O(n * k)), and it stops once a whole row is over budget.
    """
    if abs(len(a) - len(b)) > k:
        return k + 1
    lo = 0  # a common prefix and suffix cost nothing
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    hi_a, hi_b = len(a), len(b)
    while hi_a > lo and hi_b > lo and a[hi_a - 1] == b[hi_b - 1]:
        hi_a, hi_b = hi_a - 1, hi_b - 1
    a, b = a[lo:hi_a], b[lo:hi_b]
    n, m, big, w = len(a), len(b), k + 1, 2 * k + 1
    # prev[d] is D[i-1][j] for j = i - 1 - k + d; cells outside 0..m are over budget
    prev = [d - k if 0 <= d - k <= m else big for d in range(w)]
    for i in range(1, n + 1):
        cur = [big] * w
        ai = a[i - 1]
        for d in range(w):
            j = i - k + d
            if j < 0 or j > m:
                continue
            if j == 0:
                cur[d] = min(i, big)
                continue
            best = prev[d] + (ai != b[j - 1])
            if d + 1 < w and prev[d + 1] + 1 < best:
                best = prev[d + 1] + 1
            if d > 0 and cur[d - 1] + 1 < best:
                best = cur[d - 1] + 1
            cur[d] = min(best, big)
        if min(cur) > k:
            return big
        prev = cur
    return min(prev[m - n + k], big)


def tokens(text: str | None) -> list[str]:
    """The dedup normalisation's tokens: the normalised text split on whitespace."""
    return (text or "").split()


def _alike(x: str, y: str) -> bool:
    """The same word, or a typo of it ("avacado" / "avocado")."""
    return x == y or difflib.SequenceMatcher(None, x, y).ratio() >= 0.75


def is_slot_change(substitutions: list[list[tuple[str, str]]]) -> bool:
    """True when one word was replaced by the same word in two fields ("chocolate -> avocado" in
    the question and in its answer; typos of either side count, "chocolate -> avacado"): the
    subject changed and the answer followed it, a different question however close the texts.
    The same word replaced by two unrelated words ("for -> music", "for -> winter") is not one."""
    for i, j in itertools.combinations(range(len(substitutions)), 2):
        for (x1, y1), (x2, y2) in itertools.product(substitutions[i], substitutions[j]):
            if _alike(x1, x2) and _alike(y1, y2):
                return True
    return False


def near_duplicate(a_fields: list[str], b_fields: list[str], min_edits: int, rate: float, exact_below: int) -> bool:
    """The decision for one pair of records, given their normalised counted fields."""
    substitutions = []
    for a, b in zip(a_fields, b_fields):
        ta, tb = tokens(a), tokens(b)
        k = edit_budget(max(len(ta), len(tb)), min_edits, rate, exact_below)
        if levenshtein_within(ta, tb, k) > k:
            return False
        if len(ta) == len(tb):  # equal lengths within budget: the edits are (mostly) substitutions
            diffs = [(x, y) for x, y in zip(ta, tb) if x != y]
            substitutions.append(diffs if len(diffs) <= k else [])
    return not is_slot_change(substitutions)


def decision_udf(min_edits: int, rate: float, exact_below: int, n_fields: int):
    """``boolean`` pandas UDF over the a-side then the b-side normalised fields."""

    @pandas_udf("boolean")
    def decide(*texts: pd.Series) -> pd.Series:
        cols = [t.tolist() for t in texts]
        rows = zip(zip(*cols[:n_fields]), zip(*cols[n_fields:]))
        return pd.Series([near_duplicate(list(a), list(b), min_edits, rate, exact_below) for a, b in rows])

    return decide
