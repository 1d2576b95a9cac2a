"""Per-stage row accounting: the ``metrics`` table and the no-row-lost invariant."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from pyspark.sql import functions as F

from dolly_spark.ops import tables
from dolly_spark.ops.schemas import METRICS_SCHEMA


class AccountingError(RuntimeError):
    """Rows were lost or double-counted between stages."""


@dataclass
class StageCount:
    stage: str
    input_rows: int
    output_rows: int
    quarantined_rows: int = 0
    removed_rows: int = 0  # e.g. duplicates: kept in their own table, out of the main flow
    details: dict = field(default_factory=dict)  # quarantined by reason, and stage extras

    def check(self) -> None:
        if self.input_rows != self.output_rows + self.quarantined_rows + self.removed_rows:
            raise AccountingError(
                f"stage {self.stage}: input {self.input_rows} != output {self.output_rows} + "
                f"quarantined {self.quarantined_rows} + removed {self.removed_rows}"
            )


def metrics_frame(spark, run_id: str, counts: list[StageCount]):
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = [
        (
            run_id,
            c.stage,
            c.input_rows,
            c.output_rows,
            c.quarantined_rows,
            c.removed_rows,
            json.dumps(c.details, sort_keys=True),
            now,
        )
        for c in counts
    ]
    return spark.createDataFrame(rows, METRICS_SCHEMA)


def check_invariant(raw: int, out: int, quarantined: int, duplicates: int = 0, what: str = "silver") -> None:
    """raw = out + quarantine + duplicates, or the job fails loudly."""
    if raw != out + quarantined + duplicates:
        raise AccountingError(
            f"row accounting broken: raw {raw} != {what} {out} + quarantine {quarantined} + duplicates "
            f"{duplicates} (difference {raw - out - quarantined - duplicates})"
        )


def per_source_accounting(spark, names, out_name: str) -> dict[str, dict[str, int]]:
    """{source: {raw, <out_name>, quarantine, duplicates}}; raises if any source loses rows."""
    tallies: dict[str, dict[str, int]] = {}
    parts = {"raw": names.bronze, out_name: getattr(names, out_name), "quarantine": names.quarantine}
    if out_name in ("candidates", "gold"):
        parts["duplicates"] = names.duplicates
    for key, ref in parts.items():
        if not tables.table_exists(spark, ref):
            continue
        df = tables.read_table(spark, ref)
        for r in df.groupBy(F.coalesce(F.col("source"), F.lit("")).alias("s")).count().collect():
            tallies.setdefault(r["s"], dict.fromkeys(parts, 0))[key] = int(r["count"])
    for src, t in tallies.items():
        check_invariant(
            t["raw"], t[out_name], t["quarantine"], t.get("duplicates", 0), what=f"{out_name} (source {src!r})"
        )
    return dict(sorted(tallies.items()))
