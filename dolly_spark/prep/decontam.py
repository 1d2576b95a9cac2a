"""Benchmark decontamination: train records that share a word n-gram with a benchmark row.

Overlap is lm-evaluation-harness's (its decontamination janitor): a text is normalised (ASCII
letters lowercased, ``string.punctuation`` deleted), split on whitespace, and cut into n-grams of
``n`` words (13). One deviation: a text of fewer than ``n`` words is one gram of all its words
(lm-eval yields none), so a short benchmark row copied whole into a short record is caught too.

The overlap is a Spark join on the grams' xxhash64, the gram strings compared afterwards to rule
out hash collisions; only counts and the removed records reach the driver. The sets
are read with the sources' readers (tables through ``ops/tables.py``). ``docs/governance.md``
describes the whole step.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field, fields

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, StringType

from dolly_spark.ops import tables
from dolly_spark.ops.joins import anti_join
from dolly_spark.prep.clean import to_quarantine
from dolly_spark.prep.gold import GoldConfig, assign_split
from dolly_spark.prep.sources import FORMATS, SourceConfig, SourceError, hub_files, name_from_uri, read_frame, resolve

DEFAULT_NGRAM = 13
REASON_PREFIX = "benchmark_overlap:"
TRAIN_FIELDS = ("instruction", "context", "response")
# lm-eval's translation table: ASCII upper case to lower case, punctuation deleted.
_NORMALIZE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # goes into a quarantine reason and metric keys


class BenchmarkError(SourceError):
    """A benchmark set that cannot be found or read, or holds no text: one line naming the set."""


def normalize(text: str) -> str:
    return text.translate(_NORMALIZE)


def ngrams(text: str | None, n: int = DEFAULT_NGRAM) -> list[str]:
    """The n-grams of ``text``, words joined by one space; a shorter text is one gram, an empty one none."""
    words = normalize(text or "").split()
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


# --- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSet:
    uri: str  # file, folder or glob (JSONL, JSON, Parquet, CSV), Delta path, catalog.schema.table, hub id
    name: str | None = None  # default: derived from the uri, as a source's is
    format: str | None = None  # inferred when absent

    def __post_init__(self):
        if not isinstance(self.uri, str) or not self.uri:
            raise ValueError(f"--decontaminate: expected a path or table, got {self.uri!r}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"benchmark {self.uri}: format {self.format!r} is not one of {list(FORMATS)}")
        name = self.name or name_from_uri(self.uri)
        if not _NAME.fullmatch(name):
            raise ValueError(f"benchmark {self.uri}: name {name!r} may hold only letters, digits, '_', '.' and '-'")
        object.__setattr__(self, "name", name)


def parse_benchmark(value) -> BenchmarkSet:
    """``NAME=PATH_OR_TABLE`` or ``PATH_OR_TABLE`` (a flag or YAML string), or a ``{name, uri, format}`` mapping."""
    if isinstance(value, BenchmarkSet):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(BenchmarkSet)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"--decontaminate: unknown keys {unknown} in {value!r}; known: {sorted(known)}")
        return BenchmarkSet(**value)
    if not isinstance(value, str):
        raise ValueError(f"--decontaminate: expected NAME=PATH_OR_TABLE or a mapping, got {value!r}")
    name, sep, uri = value.partition("=")
    if sep and "/" not in name:  # '=' inside a path (/data/k=v/x.jsonl) is no name
        if not name or not uri:
            raise ValueError(f"--decontaminate {value!r}: expected NAME=PATH_OR_TABLE")
        return BenchmarkSet(uri=uri, name=name)
    return BenchmarkSet(uri=value)


@dataclass(frozen=True)
class DecontamConfig:
    # Flags --decontaminate and --decontam-ngram (no prefix); YAML ``decontam: {decontaminate: [...]}``.
    decontaminate: tuple[BenchmarkSet | str, ...] = field(
        default=(),
        metadata={
            "help": "benchmark set whose overlapping train records go to quarantine: [NAME=]PATH_OR_TABLE "
            "(JSONL, JSON, Parquet, Delta, catalog.schema.table, hub id; repeatable)"
        },
    )
    decontam_ngram: int = field(
        default=DEFAULT_NGRAM, metadata={"help": "words per n-gram of the benchmark overlap (lm-eval: 13)"}
    )

    def __post_init__(self):
        sets = tuple(parse_benchmark(v) for v in self.decontaminate)
        seen: dict[str, str] = {}
        for b in sets:
            if b.name in seen:
                raise ValueError(f"benchmarks {seen[b.name]} and {b.uri} have the same name {b.name!r}; set NAME=")
            seen[b.name] = b.uri
        object.__setattr__(self, "decontaminate", sets)
        if self.decontam_ngram < 1:
            raise ValueError(f"decontam_ngram must be at least 1, got {self.decontam_ngram}")

    @property
    def enabled(self) -> bool:
        return bool(self.decontaminate)


# --- reading and checking the sets ----------------------------------------------------------------


def _as_source(b: BenchmarkSet) -> SourceConfig:
    # A fixed category makes it no dolly-15k source: a .json file is read as what it holds
    # (lines or one array), not through dolly's line ingest.
    return SourceConfig(uri=b.uri, format=b.format, name=b.name, category=b.name)


def _renamed(err: SourceError, b: BenchmarkSet) -> BenchmarkError:
    return BenchmarkError(f"benchmark {b.name}: " + str(err).removeprefix(f"source {b.name}: "))


def locate(b: BenchmarkSet) -> tuple[str, str, list[str]]:
    """(format, location, files) without the engine: a path that matches nothing fails here."""
    try:
        return resolve(_as_source(b))
    except SourceError as err:
        raise _renamed(err, b) from err


def read_benchmark(spark, b: BenchmarkSet) -> DataFrame:
    """The set's rows as read (its schema resolved: an unreadable set fails here)."""
    fmt, location, files = locate(b)
    try:
        if fmt == "hub":
            fmt, files = hub_files(_as_source(b))
        if fmt not in ("table", "delta"):
            return read_frame(spark, _as_source(b), fmt, location, files)[0]
        df = tables.read_table(spark, tables.TableRef(b.name, location, location if fmt == "delta" else None))
        _ = df.schema  # lazy: a missing table fails here
        return df
    except SourceError as err:
        raise _renamed(err, b) from err
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BenchmarkError(
            f"benchmark {b.name}: cannot read {b.uri} as {fmt} ({type(err).__name__}: {first})"
        ) from err


def string_columns(df: DataFrame) -> list[str]:
    return [f.name for f in df.schema.fields if isinstance(f.dataType, StringType)]


def benchmark_rows(df: DataFrame, name: str) -> DataFrame:
    """``benchmark, row_id, text``: every top-level string column joined by a space; the row id
    is content-derived (copies numbered), so every evaluation of the frame gives the same ids."""
    cols = string_columns(df)
    if not cols:
        kinds = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        raise BenchmarkError(f"benchmark {name}: no string column to take text from; its columns are {kinds}")
    text = F.concat_ws(" ", *[F.col("`" + c.replace("`", "``") + "`") for c in cols])
    copy = F.row_number().over(Window.partitionBy("_h").orderBy("_h"))
    return (
        df.select(text.alias("text"))
        .withColumn("_h", F.xxhash64("text"))
        .withColumn("row_id", F.xxhash64("_h", copy))
        .select(F.lit(name).alias("benchmark"), "row_id", "text")
    )


def read_benchmarks(spark, cfg: DecontamConfig) -> DataFrame:
    """``benchmark, row_id, text`` of every set, each checked first (found, readable, with text)."""
    frames = [benchmark_rows(read_benchmark(spark, b), b.name) for b in cfg.decontaminate]
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


# --- the overlap --------------------------------------------------------------------------------

_gram_hash = F.xxhash64  # a module name, so a test can force collisions


def _ngrams_udf(n: int):
    # Built per call: a UDF made at import time binds to classic Spark, not the Connect session.
    @pandas_udf(ArrayType(StringType()))
    def grams(texts: pd.Series) -> pd.Series:
        return pd.Series([ngrams(t, n) for t in texts])

    return grams


def record_texts(df: DataFrame) -> DataFrame:
    """``record_id, text`` of train-shaped records: instruction, context and response joined by a space."""
    return df.select("record_id", F.concat_ws(" ", *TRAIN_FIELDS).alias("text"))


def gram_hashes(df: DataFrame, keys: list[str], n: int, with_gram: bool = False) -> DataFrame:
    """``keys, h`` (and ``gram``), one row per distinct n-gram of each row's ``text``."""
    exploded = df.select(*keys, F.explode(_ngrams_udf(n)(F.col("text"))).alias("gram"))
    out = exploded.withColumn("h", _gram_hash("gram"))
    return out.select(*keys, "h", *(["gram"] if with_gram else [])).distinct()


def overlap_pairs(records: DataFrame, benchmarks: DataFrame, n: int = DEFAULT_NGRAM) -> DataFrame:
    """``record_id, benchmark, row_id`` of every record and benchmark row sharing an n-gram.

    ``records``: ``record_id, text``; ``benchmarks``: ``benchmark, row_id, text`` (the build side
    of the hash join: pass the smaller frame here). Grams are joined on their hash; the hits'
    gram strings are then compared, so a hash collision never removes a record.
    """
    bench_keys = ["benchmark", "row_id"]
    hits = gram_hashes(benchmarks, bench_keys, n).join(gram_hashes(records, ["record_id"], n), "h")
    hit_records = hits.select("record_id").distinct().join(records, "record_id")
    hit_rows = hits.select(*bench_keys).distinct().join(benchmarks, bench_keys)
    record_grams = gram_hashes(hit_records, ["record_id"], n, with_gram=True)
    row_grams = gram_hashes(hit_rows, bench_keys, n, with_gram=True).withColumnRenamed("gram", "_row_gram")
    confirmed = (
        hits.join(record_grams, ["record_id", "h"])
        .join(row_grams, [*bench_keys, "h"])
        .where(F.col("gram") == F.col("_row_gram"))
    )
    return confirmed.select("record_id", *bench_keys).distinct()


def first_benchmark(pairs: DataFrame, order: list[str]) -> DataFrame:
    """``record_id, reason``: each record's first overlapping benchmark in config order."""
    rank = F.lit(len(order))
    for i, name in reversed(list(enumerate(order))):
        rank = F.when(F.col("benchmark") == F.lit(name), F.lit(i)).otherwise(rank)
    reason = F.lit(None).cast("string")
    for i, name in reversed(list(enumerate(order))):
        reason = F.when(F.col("_rank") == F.lit(i), F.lit(REASON_PREFIX + name)).otherwise(reason)
    first = pairs.groupBy("record_id").agg(F.min(rank).alias("_rank"))
    return first.select("record_id", reason.alias("reason"))


def overlap_quarantine(candidates: DataFrame, removed: DataFrame) -> DataFrame:
    """The removed candidates shaped for the quarantine table (stage ``gold``)."""
    rows = removed.join(candidates, "record_id").withColumn("reasons", F.array(F.col("reason")))
    return to_quarantine(rows, "gold")


def split_overlap(gold: DataFrame, n: int = DEFAULT_NGRAM) -> DataFrame:
    """``record_id`` of the eval records sharing an n-gram with some train record."""
    texts = gold.select("record_id", "split", F.concat_ws(" ", *TRAIN_FIELDS).alias("text"))
    evals = texts.where(F.col("split") == "eval").select(
        F.lit("eval").alias("benchmark"), F.col("record_id").alias("row_id"), "text"
    )
    train = texts.where(F.col("split") == "train").select("record_id", "text")
    return overlap_pairs(train, evals, n).select(F.col("row_id").alias("record_id")).distinct()


# --- the gold step --------------------------------------------------------------------------------


@dataclass
class Decontamination:
    kept: DataFrame  # the candidates minus the removed train records
    quarantine: pa.Table  # the removed ones, shaped for the quarantine table
    report: dict = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.quarantine.num_rows

    def reasons(self) -> dict[str, int]:
        return dict(Counter(self.quarantine["reason"].to_pylist()))


def decontaminate(spark, candidates: DataFrame, cfg: DecontamConfig, gold: GoldConfig, checkpoint) -> Decontamination:
    """Train candidates (gold's split) overlapping a benchmark out, with per-set counts.
    ``checkpoint(df, name)`` writes a frame once: the pairs are read three times."""
    benchmarks = read_benchmarks(spark, cfg)
    splits = assign_split(candidates.select("record_id", *TRAIN_FIELDS), gold)
    pairs = overlap_pairs(record_texts(splits), benchmarks, cfg.decontam_ngram)
    pairs = checkpoint(pairs.join(splits.select("record_id", "split"), "record_id"), "benchmark_overlap")
    order = [b.name for b in cfg.decontaminate]
    removed = first_benchmark(pairs.where(F.col("split") == "train"), order)
    quarantine = overlap_quarantine(candidates, removed).toArrow()  # few rows: they go to the driver anyway
    kept = candidates
    if quarantine.num_rows:
        kept = anti_join(candidates, spark.createDataFrame(quarantine.select(["record_id"])), "record_id")
    report = {
        "ngram": cfg.decontam_ngram,
        "benchmarks": _set_counts(benchmarks, pairs, quarantine, order),
        "train_removed": quarantine.num_rows,
    }
    return Decontamination(kept, quarantine, report)


def _set_counts(benchmarks: DataFrame, pairs: DataFrame, quarantine: pa.Table, order: list[str]) -> dict:
    """Per set: rows, rows sharing a gram with a train record, train records removed (each under
    its first set) and eval records sharing a gram (kept)."""
    rows = {r["benchmark"]: int(r["count"]) for r in benchmarks.groupBy("benchmark").count().collect()}
    is_train, is_eval = F.col("split") == "train", F.col("split") == "eval"
    agg = pairs.groupBy("benchmark").agg(
        F.countDistinct(F.when(is_train, F.col("row_id"))).alias("rows_overlapping_train"),
        F.countDistinct(F.when(is_eval, F.col("record_id"))).alias("eval_records_overlapping"),
    )
    hits = {r["benchmark"]: r.asDict() for r in agg.collect()}
    removed = Counter(quarantine["reason"].to_pylist())
    return {
        name: {
            "rows": rows.get(name, 0),
            "rows_overlapping_train": int(hits.get(name, {}).get("rows_overlapping_train", 0)),
            "train_removed": removed.get(REASON_PREFIX + name, 0),
            "eval_records_overlapping": int(hits.get(name, {}).get("eval_records_overlapping", 0)),
        }
        for name in order
    }


def split_overlap_counts(gold: DataFrame, n: int = DEFAULT_NGRAM) -> dict:
    """Our own eval records sharing an n-gram with a train record: count and fraction of eval."""
    evals = gold.where(F.col("split") == "eval").count()
    overlapping = split_overlap(gold, n).count()
    return {
        "eval_records": evals,
        "eval_records_overlapping": overlapping,
        "fraction": overlapping / evals if evals else 0.0,
    }


def check_benchmarks(spark, cfg: DecontamConfig) -> None:
    """Every set found, readable and holding a string column: before any write of the run."""
    for b in cfg.decontaminate:
        benchmark_rows(read_benchmark(spark, b), b.name)


def append_rows(held: pa.Table | None, rows: pa.Table) -> pa.Table:
    """``rows`` after the rows an earlier stage held back for quarantine, in their schema."""
    if held is None:
        return rows
    return pa.concat_tables([held, rows.select(held.column_names).cast(held.schema)])


def metric_details(report: dict) -> dict[str, float]:
    """The report as flat numbers (``decontam.<set>.<count>``): the metrics table logs them to MLflow."""
    out: dict[str, float] = {}
    for name, counts in report.get("benchmarks", {}).items():
        out.update({f"decontam.{name}.{k}": v for k, v in counts.items()})
    own = report.get("eval_train_overlap")
    if own:
        out["decontam.eval_train_overlap"] = own["eval_records_overlapping"]
        out["decontam.eval_train_overlap_fraction"] = own["fraction"]
    return out
