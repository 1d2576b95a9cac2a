"""gold_stats: sequence lengths and the packing plan summarised per split, category and source."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dolly_spark.prep.clean import with_source

ALL_CATEGORIES = "*"  # the category value of the per-split summary rows in length_stats


def length_stats(gold: DataFrame, pack_budget: int = 2048) -> DataFrame:
    """Per (split, category) and per split (category ``*``): counts, seq_len stats and packing.

    ``packing_efficiency`` = tokens / (packs x pack budget), on the per-split rows only: packs mix
    categories. ``pad_fraction_packed`` = 1 - packing_efficiency.
    """
    budget = int(pack_budget)

    def stats(keys: list, category) -> DataFrame:
        return (
            gold.groupBy(*keys)
            .agg(
                F.count(F.lit(1)).cast("long").alias("records"),
                F.sum("seq_len").cast("long").alias("tokens"),
                F.avg("seq_len").alias("mean_seq_len"),
                F.min("seq_len").cast("int").alias("min_seq_len"),
                F.max("seq_len").cast("int").alias("max_seq_len"),
                F.percentile(F.col("seq_len"), 0.5).alias("p50_seq_len"),
                F.percentile(F.col("seq_len"), 0.95).alias("p95_seq_len"),
                F.avg("prompt_len").alias("mean_prompt_len"),
                F.countDistinct("pack_id").cast("long").alias("packs"),
            )
            .withColumn("category", category)
        )

    # Rows per (split, category) and per split carry source '*'; rows per (split, source) carry
    # category '*' (own data mixed with dolly: counts and lengths by source).
    gold = gold.transform(with_source).withColumn("source", F.coalesce(F.col("source"), F.lit(ALL_CATEGORIES)))
    per_cat = stats(["split", "category"], F.col("category")).withColumn("source", F.lit(ALL_CATEGORIES))
    per_split = stats(["split"], F.lit(ALL_CATEGORIES)).withColumn("source", F.lit(ALL_CATEGORIES))
    per_source = stats(["split", "source"], F.lit(ALL_CATEGORIES)).where(F.col("source") != ALL_CATEGORIES)
    cols = [
        "split",
        "source",
        "category",
        "records",
        "tokens",
        "mean_seq_len",
        "min_seq_len",
        "max_seq_len",
        "p50_seq_len",
        "p95_seq_len",
        "mean_prompt_len",
        "packs",
    ]
    out = per_cat.select(*cols).unionByName(per_split.select(*cols))
    out = out.unionByName(per_source.select(*cols))
    efficiency = F.when(
        (F.col("category") == ALL_CATEGORIES) & (F.col("source") == ALL_CATEGORIES),
        F.col("tokens") / (F.col("packs") * F.lit(budget)),
    ).cast("double")
    return (
        out.withColumn("pack_budget", F.lit(budget).cast("int"))
        .withColumn("packing_efficiency", efficiency)
        .withColumn("pad_fraction_packed", (F.lit(1.0) - F.col("packing_efficiency")).cast("double"))
    )
