"""Training staging: gold at one Delta version -> Parquet shards every rank (and node) can read."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dolly_spark.ops import tables
from dolly_spark.train.data import TRAIN_COLUMNS

log = logging.getLogger(__name__)

ROWS_PER_SHARD = 4096


@dataclass
class StagedGold:
    directory: str
    gold_version: int
    silver_version: int | None
    train_files: list[str]
    eval_files: list[str]
    train_records: int
    eval_records: int


def repeat_weighted(table):
    """Train rows of a source with weight k staged k times (gold keeps each record once, so the
    accounting is untouched); eval rows once. Copy j of a pack gets pack_id + j * (max + 1): a
    copy holds a subset of its pack's records, so it still fits the pack budget."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "weight" not in table.column_names or table.num_rows == 0:
        return table
    weight = pc.if_else(pc.equal(table["split"], "train"), pc.fill_null(table["weight"], 1), 1)
    most = int(pc.max(weight).as_py())
    if most <= 1:
        return table
    stride = int(pc.max(pc.fill_null(table["pack_id"], 0)).as_py()) + 1
    parts = [table]
    for j in range(1, most):
        copy = table.filter(pc.greater(weight, j))
        pack = pc.add(copy["pack_id"], pa.scalar(j * stride, pa.int64()))
        parts.append(copy.set_column(copy.column_names.index("pack_id"), "pack_id", pack))
    return pa.concat_tables(parts)


def stage_gold(spark, ref: tables.TableRef, version: int, staging_root: Path) -> StagedGold:
    """Gold at ``version`` -> ``STAGING/gold_v<version>/{train,eval}/part-*.parquet``.

    Reused as is when its manifest exists, so a resumed run sees byte-identical data.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = Path(staging_root) / f"gold_v{int(version)}"
    manifest = out / "manifest.json"
    if manifest.is_file():
        staged = StagedGold(**json.loads(manifest.read_text()))
        if all(Path(f).is_file() for f in staged.train_files + staged.eval_files):
            log.info("reusing staged gold v%d at %s", version, out)
            return staged
    if out.exists():
        shutil.rmtree(out)  # a partial staging without manifest
    df = tables.read_table(spark, ref, version)
    cols = list(TRAIN_COLUMNS) + [c for c in ("silver_version", "weight") if c in df.columns]
    table = repeat_weighted(df.select(*cols).toArrow())  # Dataset.from_spark fails on Spark Connect
    table = table.sort_by([("split", "ascending"), ("pack_id", "ascending"), ("record_id", "ascending")])
    silver_version = None
    if "silver_version" in table.column_names and table.num_rows:
        silver_version = int(pc.max(table["silver_version"]).as_py())
    files: dict[str, list[str]] = {"train": [], "eval": []}
    counts = {}
    for split in ("train", "eval"):
        part = table.filter(pc.equal(table["split"], split))
        counts[split] = part.num_rows
        (out / split).mkdir(parents=True, exist_ok=True)
        for i, start in enumerate(range(0, part.num_rows, ROWS_PER_SHARD)):
            path = out / split / f"part-{i:05d}.parquet"
            pq.write_table(part.slice(start, ROWS_PER_SHARD), path)
            files[split].append(str(path))
    unknown = table.num_rows - counts["train"] - counts["eval"]
    if unknown:
        raise ValueError(f"gold has {unknown} rows whose split is neither 'train' nor 'eval'")
    if not counts["train"]:
        raise ValueError(f"gold {ref.name} v{version} has no train rows")
    staged = StagedGold(
        str(out), int(version), silver_version, files["train"], files["eval"], counts["train"], counts["eval"]
    )
    manifest.write_text(json.dumps(dataclasses.asdict(staged), indent=2))  # last: marks staging complete
    return staged
