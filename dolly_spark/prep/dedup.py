"""Silver -> gold candidates: exact and MinHash-LSH near-duplicate removal, with lineage.

Building blocks, each a named ``DataFrame -> DataFrame`` (the LSH ones in ``prep/dedup_lsh.py``):

1. ``normalize_for_matching``the configured fields, normalised (case, whitespace, punctuation)
2. ``exact_groups``       sha256 of the normalised text; one representative per group
3. ``add_shingles``       word or character n-grams, hashed to a sorted set of longs
4. ``add_signatures``     ``num_perm`` R-MinHash values per row (``rensa``, in a pandas UDF)
5. ``band_buckets``       one row per (record, band) with the band's hash as bucket
6. ``candidate_pairs``    records sharing a bucket (LSH or short-record keys), capped per bucket
7. ``verify_pairs``       the decision: token edit distance per field (``prep/dedup_edit.py``)
8. ``clusters``           connected components of the edges (union-find or label propagation)

``deduplicate`` chains them as stages sharing one :class:`DedupConfig` and work dir:
``exact_duplicates`` -> ``shingle_survivors`` (one record per exact group; 3-5 and the short keys in one pass) ->
``lsh_candidate_pairs`` -> ``verified_edges`` -> ``near_duplicate_clusters`` ->
``removed_records`` -> ``with_lineage``. It returns the kept rows plus a ``duplicates`` frame:
one row per removed record, pointing at the record kept.
No pyspark.ml and no RDDs: DataFrame/SQL operations and pandas UDFs only.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from dolly_spark.ops.joins import anti_join, semi_join
from dolly_spark.ops.schemas import DUPLICATES_COLUMNS
from dolly_spark.ops.workdir import WorkDir
from dolly_spark.prep.dedup_clusters import clusters
from dolly_spark.prep.dedup_edit import edit_budget, near_duplicate  # noqa: F401 (re-export)
from dolly_spark.prep.dedup_lsh import (  # noqa: F401 (band_buckets: a re-export)
    add_sketches,
    band_buckets,
    candidate_pairs,
    capped_bucket_stats,
    jaccard,
    shared_buckets,
    verify_pairs,
)
from dolly_spark.prep.dedup_short import short_record_buckets  # noqa: F401 (re-export)
from dolly_spark.prep.minhash import (  # noqa: F401 (band_hashes, optimal_bands_rows: re-exports)
    band_hashes,
    bands_rows_for_recall,
    optimal_bands_rows,
    rminhash_signatures,
    shingle_hashes,
)

log = logging.getLogger(__name__)

FIELDS = {"instruction_context": ("instruction", "context"), "all": ("instruction", "context", "response")}
KEEP_RULES = ("lowest_record_id", "longest_response")
SHINGLE_KINDS = ("word", "char")
FIELD_SEPARATOR = " \u241e "  # SYMBOL FOR RECORD SEPARATOR: joins fields after normalisation


@dataclass(frozen=True)
class DedupConfig:
    """Defaults chosen with ``benchmarks/dedup_planted.py`` and the dolly-15k samples in docs/dedup.md."""

    # Which fields count: "all" (prompt and answer) or "instruction_context" (repeated prompts,
    # whatever the answer). See docs/dedup.md for what each removes from dolly-15k.
    fields: str = field(
        default="all",
        metadata={"help": "fields that count: all | instruction_context", "choices": ("all", "instruction_context")},
    )
    lowercase: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = True
    keep: str = field(
        default="lowest_record_id",
        metadata={
            "help": "which record of a cluster is kept (ties: lowest record_id)",
            "choices": ("lowest_record_id", "longest_response"),
        },
    )
    # The decision (docs/dedup.md, "Definition"): every counted field within
    # max(min_edits, floor(max_edit_rate * n)) token edits, n = tokens of the longer side.
    max_edit_rate: float = field(default=0.02, metadata={"help": "edits allowed per token of the longer field"})
    min_edits: int = field(default=1, metadata={"help": "edits allowed in any field of exact_below_tokens or more"})
    exact_below_tokens: int = field(
        default=8, metadata={"help": "fields shorter than this (longer side) must match exactly"}
    )
    # Candidates only: MinHash LSH on word n-grams of the whole text, bands x rows chosen so a pair
    # at Jaccard ``threshold`` collides with probability >= lsh_recall.
    shingle: str = field(default="word", metadata={"help": "word or char n-grams", "choices": ("word", "char")})
    ngram: int = 2
    num_perm: int = 128
    threshold: float = field(
        default=0.8, metadata={"help": "lowest whole-text Jaccard LSH must propose (candidates, not the decision)"}
    )
    lsh_recall: float = field(default=0.99, metadata={"help": "collision probability at threshold"})
    seed: int = 42
    max_bucket_size: int = 200  # members kept per LSH bucket (lowest record_ids); the rest are counted
    # Records whose counted fields all have at most this many tokens get exact blocking keys that
    # every pair within one edit per field shares (LSH misses those); 0 turns it off.
    short_field_words: int = 99
    union_find_max_edges: int = 2_000_000  # above this, connected components run as DataFrame joins
    max_iterations: int = 50  # label propagation gives up (raises) after this many rounds
    # Sources in order of preference: of records duplicated across sources, the earliest source's
    # is kept (a user's copy of a dolly record is the duplicate); then the keep rule. Set by prepare.
    source_priority: tuple[str, ...] = field(default=(), metadata={"cli": False})
    # Where intermediate results are materialised (prepare: ROOT/_work/dedup); removed at the end.
    work_dir: str | None = field(
        default=None,
        metadata={"help": "intermediate parquet dir every node reads (a UC Volume on Databricks); removed at the end"},
    )

    def __post_init__(self):
        if self.fields not in FIELDS:
            raise ValueError(f"fields must be one of {sorted(FIELDS)}, got {self.fields!r}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}, got {self.keep!r}")
        if self.shingle not in SHINGLE_KINDS:
            raise ValueError(f"shingle must be one of {SHINGLE_KINDS}, got {self.shingle!r}")
        if self.ngram < 1 or self.num_perm < 2 or not 0.0 < self.threshold <= 1.0:
            raise ValueError("need ngram >= 1, num_perm >= 2 and 0 < threshold <= 1")
        if not 0.0 < self.lsh_recall < 1.0:
            raise ValueError(f"lsh_recall must be in (0, 1), got {self.lsh_recall}")
        if self.max_bucket_size < 2:
            raise ValueError("max_bucket_size must be at least 2")
        if not 0.0 <= self.max_edit_rate < 0.5 or self.min_edits < 0 or self.exact_below_tokens < 0:
            raise ValueError("need 0 <= max_edit_rate < 0.5, min_edits >= 0 and exact_below_tokens >= 0")
        if self.short_field_words < 0 or self.field_budget(self.short_field_words) > 1:
            raise ValueError(
                f"short_field_words={self.short_field_words} allows {self.field_budget(self.short_field_words)} "
                "edits per field; the short-record keys cover one: lower it (0 turns them off)"
            )

    def field_budget(self, n: int) -> int:
        """Edits allowed in a field whose longer side has ``n`` tokens."""
        return edit_budget(n, self.min_edits, self.max_edit_rate, self.exact_below_tokens)


# --- 1. normalisation and exact groups --------------------------------------------------------


def _normalize_column(c: Column, cfg: DedupConfig) -> Column:
    c = F.coalesce(c, F.lit(""))
    if cfg.lowercase:
        c = F.lower(c)
    if cfg.strip_punctuation:
        c = F.regexp_replace(c, r"[\p{P}\p{S}]", "")
    if cfg.collapse_whitespace:
        c = F.trim(F.regexp_replace(c, r"\s+", " "))
    return c


def normalize_for_matching(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Adds ``norm_<field>`` (each counted field normalised) and ``dedup_text`` (those joined by a
    separator). Each field is normalised once; later stages read these columns."""
    names = field_text_columns(cfg)
    normed = df.withColumns({n: _normalize_column(F.col(c), cfg) for c, n in zip(FIELDS[cfg.fields], names)})
    return normed.withColumn("dedup_text", dedup_text(cfg))


def dedup_text(cfg: DedupConfig) -> Column:
    """The ``norm_<field>`` columns joined by the field separator: the text exact groups hash and
    MinHash shingles."""
    return F.trim(F.concat_ws(FIELD_SEPARATOR, *[F.col(n) for n in field_text_columns(cfg)]))


def field_text_columns(cfg: DedupConfig) -> list[str]:
    """Per-field normalised texts: what the decision compares and the short-record keys cut."""
    return [f"norm_{c}" for c in FIELDS[cfg.fields]]


def source_rank(df: DataFrame, cfg: DedupConfig) -> Column:
    """Position of the record's source in ``source_priority`` (unlisted sources last)."""
    if not cfg.source_priority or "source" not in df.columns:
        return F.lit(0)
    pos = F.array_position(F.array(*[F.lit(s) for s in cfg.source_priority]), F.col("source"))
    return F.when(pos > 0, pos).otherwise(F.lit(len(cfg.source_priority) + 1)).cast("long")


def _keep_key(cfg: DedupConfig, response_chars: Column, rank: Column | None = None) -> Column:
    """A struct whose minimum over a group is the record kept: the earliest source (``rank``),
    then the lowest record_id, or the longest response with ties broken by the lowest record_id."""
    first = [rank.alias("source_rank")] if rank is not None else []
    if cfg.keep == "longest_response":
        return F.struct(*first, (-response_chars).alias("neg_response_chars"), F.col("record_id").alias("record_id"))
    return F.struct(*first, F.col("record_id").alias("record_id"))


def exact_groups(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Adds ``exact_hash``, ``exact_group_size`` and ``exact_rep`` (the record kept for the group).

    A group-by and a join, not a window: a window would sort the whole text column.
    """
    response_chars = F.length(F.coalesce(F.col("response"), F.lit("")))
    hashed = df.withColumn("exact_hash", F.sha2(F.col("dedup_text"), 256))
    reps = hashed.groupBy("exact_hash").agg(
        F.count(F.lit(1)).alias("exact_group_size"),
        F.min(_keep_key(cfg, response_chars, source_rank(df, cfg))).getField("record_id").alias("exact_rep"),
    )
    return reps.join(hashed, "exact_hash").select(*df.columns, "exact_hash", "exact_group_size", "exact_rep")


# --- 2. shingles and MinHash signatures -------------------------------------------------------


def _shingle_udf(kind: str, k: int):
    @pandas_udf("array<long>")
    def shingles(texts: pd.Series) -> pd.Series:
        return pd.Series(shingle_hashes(texts.tolist(), kind, k))

    return shingles


def add_shingles(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Adds ``shingles``: sorted distinct hashes of the word or character n-grams of ``dedup_text``,
    and ``norm_<field>``, each counted field normalised (what the decision compares).

    Built in a pandas UDF: the same n-grams as SQL ``transform(sequence(...), ...)`` took 30 s
    for 15k rows on Sail.
    """
    shingle = _shingle_udf(cfg.shingle, cfg.ngram)
    # The whole text is shingled on its own, not as the union of the fields' sets: n-grams that
    # span the field separator keep short texts apart ("... of india ␞" vs "... of japan ␞");
    # the union made 1-word-different short questions reach 0.7 on dolly-15k.
    df = df.withColumn("shingles", shingle(F.col("dedup_text")))
    if not set(FIELDS[cfg.fields]) <= set(df.columns):
        return df  # a bare dedup_text frame: the LSH stages alone
    for c, name in zip(FIELDS[cfg.fields], field_text_columns(cfg)):
        df = df.withColumn(name, _normalize_column(F.col(c), cfg))
    return df


def _signature_udf(num_perm: int, seed: int):
    @pandas_udf("array<int>")
    def signature(shingles: pd.Series) -> pd.Series:
        sig = rminhash_signatures(list(shingles), num_perm, seed).view(np.int32)  # same bits: only equality matters
        return pd.Series(list(sig))

    return signature


def add_signatures(df: DataFrame, cfg: DedupConfig) -> DataFrame:
    """Adds ``signature``: ``num_perm`` MinHash values (uint32 bits stored as int)."""
    return df.withColumn("signature", _signature_udf(cfg.num_perm, cfg.seed)(F.col("shingles")))


# --- 3. deduplicate: its result, its stages, the top level ------------------------------------


@dataclass
class DedupResult:
    kept: DataFrame  # same columns as the input: the gold candidates
    duplicates: DataFrame  # DUPLICATES_COLUMNS, one row per removed record
    stats: dict = field(default_factory=dict)  # counts gathered while running (see dedup_metrics)
    work_dir: str | None = None  # intermediate parquet the frames above read from

    def cleanup(self) -> None:
        """Delete the intermediate files once ``kept`` and ``duplicates`` have been written."""
        if self.work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


# The stages of ``deduplicate``, in order. Each takes the shared DedupConfig and WorkDir, writes
# what later stages read more than once to the work dir, and returns it (with its stats).


def exact_duplicates(silver: DataFrame, cfg: DedupConfig, work: WorkDir) -> DataFrame:
    """Every record with its exact group (``exact_hash``, ``exact_group_size``, ``exact_rep``) and
    what the keep rule needs later (``response_chars``, ``source_rank``)."""
    grouped = silver.transform(lambda d: normalize_for_matching(d, cfg)).transform(lambda d: exact_groups(d, cfg))
    return work.materialize(
        grouped.select(
            "record_id",
            *field_text_columns(cfg),
            "exact_hash",
            "exact_group_size",
            "exact_rep",
            F.length(F.coalesce(F.col("response"), F.lit(""))).alias("response_chars"),
            source_rank(silver, cfg).alias("source_rank"),
        ),
        "exact",
    )


def shingle_survivors(exact: DataFrame, cfg: DedupConfig, work: WorkDir) -> DataFrame:
    """One record per exact group (MinHash runs on these only) with its normalised fields and, from
    one pass (``dedup_lsh.add_sketches``), its LSH band hashes and short-record keys."""
    survivors = exact.where(F.col("record_id") == F.col("exact_rep"))
    fields = survivors.select(
        "record_id", "response_chars", "source_rank", *field_text_columns(cfg), dedup_text(cfg).alias("dedup_text")
    )
    bands, rows = bands_rows_for_recall(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    sketched = add_sketches(fields, "dedup_text", field_text_columns(cfg), cfg, bands, rows)
    # The shingles are not kept: only the Jaccard of the few records in pairs needs them
    # (``with_shingles``), and storing ~200 longs per record cost 0.5-0.8 s of this stage's 4 s at 150k.
    return work.materialize(sketched.drop("dedup_text", "shingles"), "shingles")


def with_shingles(shingled: DataFrame, ids: DataFrame, cfg: DedupConfig) -> DataFrame:
    """The ``shingled`` rows whose ``record_id`` is in ``ids``, with their ``shingles`` computed
    again (the same function of the same ``dedup_text`` as ``shingle_survivors``)."""
    shingle = _shingle_udf(cfg.shingle, cfg.ngram)
    return semi_join(shingled, ids, "record_id").withColumn("shingles", shingle(dedup_text(cfg)))


def lsh_candidate_pairs(shingled: DataFrame, cfg: DedupConfig, work: WorkDir) -> tuple[DataFrame, dict]:
    """Pairs sharing an LSH bucket (the ``bands`` of ``shingle_survivors``) or a short-record
    bucket (its ``short_keys``); with the capped-bucket stats and the pair count."""
    buckets = shingled.select("record_id", F.posexplode("bands").alias("band", "bucket"))
    shared = work.materialize(shared_buckets(buckets), "shared_buckets")
    stats = capped_bucket_stats(shared, cfg.max_bucket_size)
    pairs = candidate_pairs(shared, cfg.max_bucket_size)
    if cfg.short_field_words > 0:
        # Grouped by the key alone, band -1 added after: grouping on the literal band too took
        # 13 s instead of 0.8 s for 4.6M keys (150k records) on Sail.
        keys = shingled.select("record_id", F.explode("short_keys").alias("bucket"))
        blocks = shared_buckets(keys, ("bucket",)).select(F.lit(-1).alias("band"), "bucket", "bucket_size", "members")
        short = work.materialize(blocks, "short_buckets")
        stats.update({f"short_{k}": v for k, v in capped_bucket_stats(short, cfg.max_bucket_size).items()})
        pairs = pairs.unionByName(candidate_pairs(short, cfg.max_bucket_size)).distinct()
    pairs = work.materialize(pairs, "candidate_pairs")
    stats["candidate_pairs"] = pairs.count()
    return pairs, stats


def verified_edges(pairs: DataFrame, shingled: DataFrame, cfg: DedupConfig, work: WorkDir) -> tuple[DataFrame, dict]:
    """The candidate pairs that are near duplicates by the edit-distance decision."""
    ids = pairs.select(F.col("id_a").alias("record_id")).unionByName(pairs.select(F.col("id_b").alias("record_id")))
    verified = verify_pairs(
        pairs,
        with_shingles(shingled, ids, cfg),
        field_text_columns(cfg),
        cfg.min_edits,
        cfg.max_edit_rate,
        cfg.exact_below_tokens,
    )
    edges = work.materialize(verified, "verified_pairs")
    return edges, {"verified_pairs": edges.count()}


def near_duplicate_clusters(
    edges: DataFrame, shingled: DataFrame, cfg: DedupConfig, work: WorkDir
) -> tuple[DataFrame, dict]:
    """``record_id, cluster, near_rep``: connected components of the edges, and the record kept
    per cluster by the same keep rule as exact groups."""
    components, method = clusters(edges, cfg.union_find_max_edges, cfg.max_iterations, work)
    components = work.materialize(components, "components")
    members = components.join(shingled.select("record_id", "response_chars", "source_rank"), "record_id")
    reps = members.groupBy("cluster").agg(
        F.min(_keep_key(cfg, F.col("response_chars"), F.col("source_rank"))).getField("record_id").alias("near_rep")
    )
    near = work.materialize(members.join(reps, "cluster").select("record_id", "cluster", "near_rep"), "near_reps")
    return near, {"components_method": method}


def removed_records(
    exact: DataFrame, near: DataFrame, shingled: DataFrame, cfg: DedupConfig, work: WorkDir
) -> DataFrame:
    """One row per removed record: ``record_id, kept_record_id, cluster_id, method, jaccard``,
    pointing at its final survivor (its exact rep, or that rep's near-duplicate rep)."""
    resolved = exact.join(
        near.select(F.col("record_id").alias("exact_rep"), "cluster", "near_rep"), "exact_rep", "left"
    ).withColumn("final_rep", F.coalesce(F.col("near_rep"), F.col("exact_rep")))
    exact_removed = resolved.where(F.col("record_id") != F.col("exact_rep")).select(
        "record_id",
        F.col("final_rep").alias("kept_record_id"),
        F.concat(F.lit("exact:"), F.substring("exact_hash", 1, 16)).alias("cluster_id"),
        F.lit("exact").alias("method"),
        F.lit(1.0).cast("double").alias("jaccard"),
    )
    members = with_shingles(shingled, near.select("record_id"), cfg).select("record_id", "shingles")
    sh_kept = members.select(F.col("record_id").alias("kept_record_id"), F.col("shingles").alias("sh_kept"))
    near_removed = (
        near.where(F.col("record_id") != F.col("near_rep"))
        .join(members, "record_id")
        .join(sh_kept, F.col("near_rep") == F.col("kept_record_id"))
        .select(
            "record_id",
            "kept_record_id",
            F.concat(F.lit("minhash:"), F.col("cluster")).alias("cluster_id"),
            F.lit("minhash").alias("method"),
            jaccard(F.col("shingles"), F.col("sh_kept")).alias("jaccard"),
        )
    )
    return work.materialize(exact_removed.unionByName(near_removed), "removed")


def with_lineage(removed: DataFrame, silver: DataFrame) -> DataFrame:
    """The ``duplicates`` rows (DUPLICATES_COLUMNS): which source each side came from, since
    dedup runs across sources."""
    src = F.col("source") if "source" in silver.columns else F.lit(None).cast("string")
    sources = silver.select("record_id", src.alias("source"))
    kept_sources = sources.select(F.col("record_id").alias("kept_record_id"), F.col("source").alias("kept_source"))
    return (
        removed.join(silver.select("record_id", "category"), "record_id")
        .join(sources, "record_id")
        .join(kept_sources, "kept_record_id", "left")
        .select(*DUPLICATES_COLUMNS)
    )


def group_counts(exact: DataFrame, near: DataFrame) -> dict[str, int]:
    """Exact groups with more than one member, and near-duplicate clusters."""
    groups = exact.where(F.col("exact_group_size") > 1).agg(F.countDistinct("exact_hash").alias("n")).collect()[0]
    return {"exact_groups": int(groups["n"] or 0), "near_clusters": near.select("cluster").distinct().count()}


def deduplicate(silver: DataFrame, cfg: DedupConfig = DedupConfig()) -> DedupResult:
    """Exact dedup, then near duplicates among the survivors (LSH and short-record candidates,
    decided by edit distance). Every input row ends up in exactly one of
    ``kept`` and ``duplicates``; reruns on the same input give the same result."""
    work = WorkDir(cfg.work_dir)
    bands, rows = bands_rows_for_recall(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    stats: dict = {
        "bands": bands,
        "rows": rows,
        "threshold": cfg.threshold,
        "fields": cfg.fields,
        "max_edit_rate": cfg.max_edit_rate,
        "min_edits": cfg.min_edits,
    }
    exact = exact_duplicates(silver, cfg, work)
    shingled = shingle_survivors(exact, cfg, work)
    pairs, pair_stats = lsh_candidate_pairs(shingled, cfg, work)
    edges, edge_stats = verified_edges(pairs, shingled, cfg, work)
    near, cluster_stats = near_duplicate_clusters(edges, shingled, cfg, work)
    removed = removed_records(exact, near, shingled, cfg, work)
    stats.update({**pair_stats, **edge_stats, **cluster_stats, **group_counts(exact, near)})
    stats["stage_seconds"] = dict(work.timings)
    return DedupResult(
        kept=anti_join(silver, removed, "record_id"),
        duplicates=with_lineage(removed, silver),
        stats=stats,
        work_dir=str(work.path),
    )


def dedup_metrics(result: DedupResult) -> dict:
    """JSON-serialisable run metrics for the ``metrics`` table ``details``."""
    by_method = {r["method"]: int(r["count"]) for r in result.duplicates.groupBy("method").count().collect()}
    by_category = {
        (r["category"] if r["category"] is not None else "null"): int(r["count"])
        for r in result.duplicates.groupBy("category").count().collect()
    }
    out = dict(result.stats)
    out["removed_by_method"] = {m: by_method.get(m, 0) for m in ("exact", "minhash")}
    out["removed_by_category"] = dict(sorted(by_category.items()))
    out["removed"] = sum(by_method.values())
    return out
