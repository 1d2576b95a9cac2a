"""Joins written with the small side on the left, where the hash table is built.

The embedded engine runs with join swapping off (``ops/session.py``): its optimizer swapped the
packing plan's join so the hash table held every gold row (0.5 GiB at 150k records).
With swapping off the left input is always the build side, so these helpers put the small
frame there. On Databricks the optimizer picks sides by statistics; the results are the same.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

_HIT = "_joins_hit"


def anti_join(wide: DataFrame, keys: DataFrame, on: str) -> DataFrame:
    """Rows of ``wide`` whose ``on`` value is not in ``keys`` (``wide`` left-anti ``keys``), with
    ``keys`` as the build side: a right join that keeps the rows without a match."""
    marks = keys.select(on).withColumn(_HIT, F.lit(True))
    return marks.join(wide, on, "right").where(F.col(_HIT).isNull()).select(*wide.columns)


def semi_join(wide: DataFrame, keys: DataFrame, on: str) -> DataFrame:
    """Rows of ``wide`` whose ``on`` value is in ``keys`` (``wide`` left-semi ``keys``), with the
    distinct keys as the build side: an inner join, each wide row once however often its key repeats."""
    return keys.select(on).distinct().join(wide, on, "inner").select(*wide.columns)


def lookup_join(small: DataFrame, wide: DataFrame, on: str) -> DataFrame:
    """Every row of ``wide`` with the columns of ``small`` (null where it has no match): ``wide``
    left-join ``small``, with ``small`` as the build side. Columns: ``wide``'s, then ``small``'s."""
    extra = [c for c in small.columns if c != on]
    return small.join(wide, on, "right").select(*wide.columns, *extra)
