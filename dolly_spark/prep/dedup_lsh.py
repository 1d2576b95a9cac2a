"""LSH blocking and verification on DataFrames: the bands of MinHash signatures, the records
that share a bucket, and the decision on each candidate pair (see ``prep/dedup.py``).

Config-free: ``deduplicate`` passes the numbers in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, LongType, StructField, StructType

from dolly_spark.prep.dedup_edit import decision_udf
from dolly_spark.prep.dedup_short import columns_keys
from dolly_spark.prep.minhash import band_hashes, rminhash_signatures, shingle_hashes


def _band_udf(bands: int, rows: int):
    @pandas_udf("array<long>")
    def band(signature: pd.Series) -> pd.Series:
        if len(signature) == 0:
            return pd.Series([], dtype=object)
        sig = np.stack(signature.to_numpy()).view(np.uint32)
        return pd.Series(list(band_hashes(sig, bands, rows)))

    return band


def band_buckets(df: DataFrame, bands: int, rows: int) -> DataFrame:
    """One row per (record, band): ``record_id, band, bucket`` (the band's hash).

    Band hashes come from one pandas UDF call: an SQL ``transform`` over the signature made Sail
    re-evaluate the signature UDF once per band.
    """
    return df.select("record_id", F.posexplode(_band_udf(bands, rows)(F.col("signature"))).alias("band", "bucket"))


def shared_buckets(buckets: DataFrame, keys: tuple[str, ...] = ("band", "bucket")) -> DataFrame:
    """Buckets with two or more members: ``<keys>, bucket_size, members`` (sorted ids).
    ``keys=("bucket",)`` for a single band with no ``band`` column."""
    return (
        buckets.groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("bucket_size"), F.array_sort(F.collect_list("record_id")).alias("members"))
        .where(F.col("bucket_size") > 1)
    )


def candidate_pairs(shared: DataFrame, max_bucket_size: int) -> DataFrame:
    """Distinct ``id_a < id_b`` pairs sharing a bucket.

    Only the ``max_bucket_size`` lowest record_ids of a bucket pair up: a degenerate bucket would
    otherwise produce size^2 pairs (see ``capped_bucket_stats``).
    """
    cap = max_bucket_size
    capped = shared.select(F.slice("members", 1, cap).alias("members"))
    return (
        capped.select("members", F.posexplode("members").alias("pos", "id_a"))
        .select("id_a", F.explode(F.slice("members", F.col("pos") + 2, cap)).alias("id_b"))
        .distinct()
    )


def capped_bucket_stats(shared: DataFrame, max_bucket_size: int) -> dict[str, int]:
    row = (
        shared.where(F.col("bucket_size") > max_bucket_size)
        .agg(F.count(F.lit(1)).alias("buckets"), F.sum(F.col("bucket_size") - max_bucket_size).alias("members"))
        .collect()[0]
    )
    return {"capped_buckets": int(row["buckets"] or 0), "capped_members": int(row["members"] or 0)}


def jaccard(a: Column, b: Column) -> Column:
    """Jaccard similarity of two arrays treated as sets."""
    return (F.size(F.array_intersect(a, b)) / F.size(F.array_union(a, b))).cast("double")


def verify_pairs(
    pairs: DataFrame,
    shingled: DataFrame,
    text_columns: list[str] | tuple[str, ...],
    min_edits: int = 1,
    rate: float = 0.02,
    exact_below: int = 8,
) -> DataFrame:
    """Candidate pairs that are near duplicates: ``id_a, id_b, jaccard`` (whole-text Jaccard, for
    the lineage table only).

    The decision is ``dedup_edit.near_duplicate`` on the per-field normalised texts
    (``text_columns``): every field within its token edit budget, and not a slot change.
    """
    cols = ["shingles", *text_columns]
    sa = shingled.select(F.col("record_id").alias("id_a"), *[F.col(c).alias("a_" + c) for c in cols])
    sb = shingled.select(F.col("record_id").alias("id_b"), *[F.col(c).alias("b_" + c) for c in cols])
    texts = [F.col("a_" + t) for t in text_columns] + [F.col("b_" + t) for t in text_columns]
    decide = decision_udf(min_edits, rate, exact_below, len(text_columns))
    whole = jaccard(F.col("a_shingles"), F.col("b_shingles"))
    return (
        pairs.join(sa, "id_a")
        .join(sb, "id_b")
        .withColumn("near", decide(*texts))
        .where(F.col("near"))
        .select("id_a", "id_b", whole.alias("jaccard"))
    )


# --- one pass over the exact-group survivors: shingles, band hashes, short-record keys ---------
# The same functions as add_shingles -> add_signatures -> band_buckets and short_record_buckets,
# in one mapInArrow (a plan node, evaluated once per row): three pandas UDFs meant three
# conversions to pandas and back, serialised by the GIL on the embedded engine. Lists go to Arrow
# as flat values plus offsets, with no Python object per row.

SKETCH_COLUMNS = ("shingles", "bands", "short_keys")


def _list_array(parts: list[np.ndarray]) -> pa.ListArray:
    """A list<int64> array of ``parts``, built from one flat buffer and its offsets."""
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    flat = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _sketch_batch(batch: pa.RecordBatch, text_column: str, field_columns: list[str], p: dict) -> pa.RecordBatch:
    shingles = shingle_hashes(batch.column(text_column), p["kind"], p["ngram"])
    signatures = rminhash_signatures(shingles, p["num_perm"], p["seed"])
    bands = band_hashes(signatures, p["bands"], p["rows"])
    if p["short_words"] > 0 and field_columns:
        fields = [batch.column(c) for c in field_columns]
        keys = columns_keys(fields, p["short_words"], p["min_edits"], p["rate"], p["exact_below"])
    else:
        keys = [np.zeros(0, dtype=np.int64)] * batch.num_rows
    added = [_list_array(shingles), _list_array(list(bands)), _list_array(keys)]
    return pa.RecordBatch.from_arrays(batch.columns + added, names=batch.schema.names + list(SKETCH_COLUMNS))


def add_sketches(df: DataFrame, text_column: str, field_columns: list[str], cfg, bands: int, rows: int) -> DataFrame:
    """Adds ``shingles`` (as ``add_shingles``), ``bands`` (one bucket hash per band, as
    ``band_buckets``) and ``short_keys`` (as ``short_record_buckets``; empty when
    ``cfg.short_field_words`` is 0 or the record has a longer field). ``cfg``: a DedupConfig."""
    params = {
        "kind": cfg.shingle,
        "ngram": cfg.ngram,
        "num_perm": cfg.num_perm,
        "seed": cfg.seed,
        "bands": bands,
        "rows": rows,
        "short_words": cfg.short_field_words,
        "min_edits": cfg.min_edits,
        "rate": cfg.max_edit_rate,
        "exact_below": cfg.exact_below_tokens,
    }
    fields = list(field_columns)

    def sketch(batches):
        for batch in batches:
            yield _sketch_batch(batch, text_column, fields, params)

    added = [StructField(c, ArrayType(LongType(), containsNull=False), nullable=True) for c in SKETCH_COLUMNS]
    return df.mapInArrow(sketch, StructType(df.schema.fields + added))
