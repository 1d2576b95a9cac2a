"""Pad-token fraction: Dolly's batching policy against our packing plan, on the real gold table.

Dolly 2.0 trains on random batches of 8, each padded to its longest record with
``pad_to_multiple_of=8``. Ours packs records into rows of at most max_seq_len tokens by the
gold table's ``pack_id`` (the collator keeps attention inside each record), and pads those
rows the same way. Also shown: length-grouped batches (sorted by length, no packing).

    .venv/bin/python benchmarks/pad_fraction.py --output-root out          # prepared tables
    .venv/bin/python benchmarks/pad_fraction.py --output-root /tmp/b --build  # build them first
    .venv/bin/python benchmarks/pad_fraction.py --output-root /tmp/c --build --pack-group-rows 2000  # 8 parallel groups
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DOLLY_TOKENIZER", str(SHARED / "tokenizer" / "gpt-neox-20b"))


def prepared(root: str, build: bool, pack_group_rows: int | None = None):
    """(spark, TableNames) with silver and gold present under ``root`` (built when asked)."""
    from dolly_spark.ops import tables
    from dolly_spark.ops.session import get_spark
    from dolly_spark.prep import gold
    from dolly_spark.prep.prepare import PrepareConfig, run

    spark = get_spark("dolly_gold_bench")
    names = tables.TableNames(root=root)
    for table in ("silver", "gold"):
        if not tables.table_exists(spark, names.ref(table)) and not build:
            raise SystemExit(f"no {table} table under {root}; pass --build or run dolly-spark prepare first")
    if not tables.table_exists(spark, names.silver):
        run(PrepareConfig(input=str(SHARED / "databricks-dolly-15k.jsonl"), output_root=root, until="silver"), spark)
    if not tables.table_exists(spark, names.gold):
        gold.write_gold(
            spark,
            names,
            tables.read_table(spark, names.silver),
            gold.GoldConfig(**({"pack_group_rows": pack_group_rows} if pack_group_rows else {})),
            tables.table_version(spark, names.silver),
        )
    return spark, names


def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_stats(rows: list[int], batch_size: int, multiple: int) -> tuple[int, int]:
    """(real tokens, padded slots) when ``rows`` are batched in this order, pad to longest."""
    real = sum(rows)
    slots = 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        slots += len(batch) * padded(max(batch), multiple)
    return real, slots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-root", default=str(REPO / "out"))
    p.add_argument("--build", action="store_true", help="prepare silver and gold under --output-root if missing")
    p.add_argument("--split", default="train", choices=("train", "eval"))
    p.add_argument(
        "--pack-group-rows", type=int, default=None, help="with --build: packing groups of this many records"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pad-to-multiple-of", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5, help="random batch orders averaged for the random policies")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from dolly_spark.ops import tables

    spark, names = prepared(args.output_root, args.build, args.pack_group_rows)
    pdf = tables.read_table(spark, names.gold).where(f"split = '{args.split}'").select("seq_len", "pack_id").toPandas()
    lengths = pdf["seq_len"].astype(int).tolist()
    packs = pdf.groupby("pack_id")["seq_len"].sum().astype(int).tolist()
    b, m = args.batch_size, args.pad_to_multiple_of

    def averaged(rows: list[int]) -> float:
        fractions = []
        for seed in range(args.seeds):
            order = list(rows)
            random.Random(seed).shuffle(order)
            real, slots = pad_stats(order, b, m)
            fractions.append(1 - real / slots)
        return sum(fractions) / len(fractions)

    dolly = averaged(lengths)
    grouped_real, grouped_slots = pad_stats(sorted(lengths), b, m)
    grouped = 1 - grouped_real / grouped_slots
    packed = averaged(packs)
    print(
        f"gold split={args.split}: {len(lengths)} records, {sum(lengths)} tokens, {len(packs)} packed rows "
        f"(batch {b}, pad_to_multiple_of {m}, {args.seeds} random orders)"
    )
    print(f"{'policy':<42}{'pad fraction':>14}")
    print(f"{'dolly: random batches, pad to longest':<42}{dolly:>14.2%}")
    print(f"{'length-grouped batches, pad to longest':<42}{grouped:>14.2%}")
    print(f"{'ours: packed rows (pack_id), pad to longest':<42}{packed:>14.2%}")
    total = sum(lengths)
    print(
        f"tokens processed incl. padding: dolly {total / (1 - dolly):,.0f}, ours {total / (1 - packed):,.0f} "
        f"({(1 - packed) / (1 - dolly):.2f}x fewer)"
    )
    print(
        f"ratio dolly/ours (pad fraction): {dolly / packed:.1f}x; target ours <= 5%: {'met' if packed <= 0.05 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
