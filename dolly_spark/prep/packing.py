"""Gold's packing plan: which records share a packed training row (``pack_id``).

Best-fit decreasing per split (or per hash group of a split, packed in parallel), so a packed
row never exceeds the model's context and padding stays under 1% on dolly-15k.
"""

from __future__ import annotations

import bisect

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType


def best_fit_decreasing(record_ids: list[str], lengths: list[int], budget: int, separator: int = 0) -> list[int]:
    """Pack ids into rows of at most ``budget`` tokens; returns a pack number per input position.

    Longest first (ties by record_id), each into the fullest pack that still fits: deterministic,
    O(n log n), and within 11/9 of the optimal pack count.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], record_ids[i]))
    free: list[tuple[int, int]] = []  # (remaining tokens, pack number), sorted
    packs = [0] * len(lengths)
    n_packs = 0
    for i in order:
        need = lengths[i] + separator
        if need > budget:
            raise ValueError(f"record {record_ids[i]} needs {need} tokens, more than the pack budget {budget}")
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            remaining, pack = free.pop(at)
        else:
            remaining, pack = budget, n_packs
            n_packs += 1
        packs[i] = pack
        if remaining - need > 0:
            bisect.insort(free, (remaining - need, pack))
    return packs


PACK_GROUP = "_pack_group"


def _pack_split(budget: int, separator: int, groups: int = 1):
    def pack(table: pa.Table) -> pa.Table:
        ok = pc.is_null(table["reason"]).to_pylist() if "reason" in table.column_names else [True] * table.num_rows
        at = [i for i, good in enumerate(ok) if good]
        ids, lengths = table["record_id"].to_pylist(), table["seq_len"].to_pylist()
        packs = best_fit_decreasing([ids[i] for i in at], [lengths[i] for i in at], budget, separator)
        group = 0
        if PACK_GROUP in table.column_names:
            group = int(table[PACK_GROUP][0].as_py()) if table.num_rows else 0
            table = table.drop_columns([PACK_GROUP])
        pack_id: list[int | None] = [None] * table.num_rows
        for i, p in zip(at, packs):
            pack_id[i] = p * groups + group  # unique within the split across groups; = p for one group
        return table.append_column("pack_id", pa.array(pack_id, pa.int64()))

    return pack


def pack_groups(n_rows: int | None, group_rows: int) -> int:
    """Packing groups per split for ``n_rows`` input rows (1 when unknown or small)."""
    return max(1, -(-int(n_rows or 0) // group_rows))


def plan_packing(df: DataFrame, cfg, n_rows: int | None = None) -> DataFrame:
    """Add ``pack_id``: rows sharing (split, pack_id) fit in one row of ``cfg.pack_budget`` tokens
    (``cfg``: gold's config: pack_budget, pack_separator_tokens, pack_group_rows).

    Each split is cut into ``pack_groups(n_rows)`` groups by a hash of record_id, packed in
    parallel: a random sample of thousands of records packs as tightly as the whole split (only
    each group's last, partly filled pack is extra). One Arrow group carries every column through
    (no self-join, so the tokenizer runs once per consumer: Sail's ``cache()`` is a no-op). Rows
    with a reject reason get a null pack_id.
    """
    schema = StructType(df.schema.fields + [StructField("pack_id", LongType())])
    groups = pack_groups(n_rows, cfg.pack_group_rows)
    pack = _pack_split(cfg.pack_budget, cfg.pack_separator_tokens, groups)
    if groups == 1:
        return df.groupBy("split").applyInArrow(pack, schema)
    keyed = df.withColumn(PACK_GROUP, F.pmod(F.xxhash64("record_id"), F.lit(groups)))
    return keyed.groupBy("split", PACK_GROUP).applyInArrow(pack, schema)
