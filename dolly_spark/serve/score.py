"""``dolly-spark score``: batch generation from a Delta table (or SQL query) into ``predictions``.

Incremental and idempotent: each input row gets a stable ``row_key``; rows already in
``predictions`` for the same ``model_version`` are skipped, and new rows land in chunks of
``chunk_rows``, each through one Delta ``MERGE`` on (row_key, model_version), retried on commit
conflicts: a killed run keeps its committed chunks, and reruns and concurrent jobs never duplicate
a row. A row that cannot be generated (e.g. a prompt longer than the context
window) gets an ``error`` instead of failing the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from pyspark.sql import functions as F

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import TrackedLocation
from dolly_spark.ops.joins import anti_join
from dolly_spark.ops.schemas import RESULT_COLUMNS, RESULT_DDL
from dolly_spark.ops.session import engine_name
from dolly_spark.serve.generate import GenerationConfig
from dolly_spark.serve.merge import (  # noqa: F401  (re-exported: score.merge_new_rows, ...)
    MERGE_RETRIES,
    drop_staging,
    ensure_table,
    merge_new_rows,
    remove_stale_staging,
    staging_ref,
)
from dolly_spark.serve.model_download import download_model_once, shared_download_dir

log = logging.getLogger(__name__)

UDF_MODES = ("pandas_iter", "spark_udf")
ALL_SPLITS = "all"  # --split value that keeps every input row
# What the generation UDF returns, one struct per row (also the pyfunc's output columns).
# Gold columns that only training needs; dropped from predictions by default.
TRAINING_ONLY_COLUMNS = ("prompt", "text", "input_ids", "prompt_len", "seq_len", "pack_id")
OUTPUT_ONLY_COLUMNS = ("row_key", *RESULT_COLUMNS, "model_uri", "model_version", "generation_config", "scored_at")


@dataclass
class ScoreConfig(TrackedLocation):
    model_uri: str = field(
        default="", metadata={"help": "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH or a local HF model dir"}
    )
    input_table: str = field(
        default="gold", metadata={"help": "logical table (gold, silver, ...) or a catalog.schema.table name"}
    )
    query: str | None = field(
        default=None, metadata={"help": "SQL query to score instead of --input-table (run as given)"}
    )
    split: str = field(
        default="eval",
        metadata={
            "help": f"keep rows with this split value when the input has a split column ({ALL_SPLITS!r}: every row)"
        },
    )
    output_table: str = field(default="predictions", metadata={"help": "logical output table"})
    drop_columns: tuple[str, ...] = field(
        default=TRAINING_ONLY_COLUMNS, metadata={"help": "input columns not copied to the output"}
    )
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"flag_prefix": ""})
    limit: int = field(default=0, metadata={"help": "score at most this many rows, the first by row_key (0: all)"})
    num_partitions: int | None = field(
        default=None, metadata={"help": "repartition before generating (e.g. one per GPU)"}
    )
    chunk_rows: int = field(
        default=10000,
        metadata={"help": "rows generated and MERGEd per commit: a killed run keeps every finished chunk"},
    )
    download_dir: str | None = field(
        default=None,
        metadata={
            "help": "where MLflow models are downloaded (on a multi-node cluster: a Volume the workers can read)"
        },
    )
    stale_staging_hours: float = field(
        default=6.0, metadata={"help": "drop staging tables of killed runs older than this"}
    )
    udf_mode: str = field(default="pandas_iter", metadata={"help": "generation UDF", "choices": UDF_MODES})

    def __post_init__(self):
        if not self.split:
            raise ValueError(f"split: give a split value, or {ALL_SPLITS!r} for every row")
        if self.limit < 0:
            raise ValueError(f"limit: expected 0 (all rows) or more, got {self.limit}")

    def generation_config(self) -> GenerationConfig:
        return self.generation


@dataclass
class ScoreResult:
    scored: int  # rows this run inserted into predictions (failed ones included)
    skipped: int  # rows already scored for this model version (before or by a concurrent job)
    failed: int  # rows this run generated with the error column set
    total: int  # input rows considered (after split filter and limit)
    predictions_version: int | None
    model_uri: str
    model_version: str
    duplicates: int = 0  # input rows sharing a row_key with another input row
    seconds: float = 0.0
    chunks: int = 0  # chunks committed by this run
    generate_seconds: float = 0.0  # generating and staging the chunks (MERGEs excluded)
    rows_per_s: float = 0.0  # generated rows per generate second
    tokens_per_s: float = 0.0  # generated (completion) tokens per generate second
    prompt_tokens_per_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# Model resolution: a URI becomes a local HF directory plus a stable version string.


@dataclass(frozen=True)
class ResolvedModel:
    uri: str  # as given
    local_dir: str  # HF model directory (config.json + safetensors + tokenizer), or a LoRA adapter directory
    version: str  # what rows are keyed on: "NAME/3", "run:<id>/<path>" or "dir:<fingerprint>"
    pyfunc_uri: str | None = None  # MLflow model URI, when there is one (spark_udf mode)


def _find_hf_dir(root: Path) -> Path:
    """The model directory inside a downloaded MLflow model (artifacts/hf_model/...): a saved model
    (config.json + *.safetensors) or an adapter-only one (``text.adapters``, loaded onto its base)."""
    from dolly_spark.text.adapters import ADAPTER_CONFIG, is_adapter_dir

    if (root / "config.json").is_file() or is_adapter_dir(root):
        return root
    found = sorted(
        p.parent
        for name in ("config.json", ADAPTER_CONFIG)
        for p in root.rglob(name)
        if any(p.parent.glob("*.safetensors"))
    )
    if not found:
        raise FileNotFoundError(
            f"no HF model or adapter directory (config.json or {ADAPTER_CONFIG}, + *.safetensors) under {root}"
        )
    return min(found, key=lambda p: len(p.parts))


def fingerprint_dir(model_dir: str | Path, chunk: int = 1 << 20) -> str:
    """Content fingerprint of a model directory: config and tokenizer files whole, each weight file
    by size plus its head, middle and tail (hashing a 24 GB checkpoint whole would take minutes)."""
    h = hashlib.sha256()
    root = Path(model_dir)
    for p in sorted(root.iterdir()):
        if not p.is_file():
            continue
        h.update(p.name.encode() + b"\0")
        size = p.stat().st_size
        h.update(str(size).encode() + b"\0")
        with p.open("rb") as f:
            if size <= 3 * chunk or p.suffix in (".json", ".txt", ".model"):
                h.update(f.read())
            else:
                for offset in (0, size // 2, size - chunk):
                    f.seek(offset)
                    h.update(f.read(chunk))
    return h.hexdigest()[:16]


def resolve_model(uri: str, download_dir: str | None = None) -> ResolvedModel:
    if not uri:
        raise ValueError("give --model-uri: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH or a local dir")
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        path = Path(uri).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {uri!r} does not exist")
        if (path / "MLmodel").is_file():  # a saved MLflow model directory
            hf = _find_hf_dir(path)
            return ResolvedModel(uri, str(hf), f"dir:{fingerprint_dir(hf)}", pyfunc_uri=str(path))
        hf = _find_hf_dir(path)
        return ResolvedModel(uri, str(hf), f"dir:{fingerprint_dir(hf)}")

    version, pinned = _mlflow_version(uri)
    local = download_model_once(pinned, version, download_dir)  # once per version: executors read it
    return ResolvedModel(uri, str(_find_hf_dir(Path(local))), version, pyfunc_uri=pinned)


def _mlflow_version(uri: str) -> tuple[str, str]:
    """(version, pinned URI): an alias is resolved once, so every row and the download name the
    same model even if the alias moves while the job runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if uri.startswith("models:/"):
        ref = uri[len("models:/") :]
        if "@" in ref:
            from dolly_spark.serve.model_uri import resolve_alias  # clear error naming the existing aliases

            mv = resolve_alias(uri)
            return f"{mv.name}/{mv.version}", f"models:/{mv.name}/{mv.version}"
        if "/" in ref:
            name, ver = ref.rsplit("/", 1)
            return f"{name}/{client.get_model_version(name, ver).version}", uri
        return ref, uri  # models:/m-<id>: a logged model id is already immutable
    if uri.startswith("runs:/"):
        return "run:" + uri[len("runs:/") :].strip("/"), uri
    return uri, uri


# ---------------------------------------------------------------------------------------------
# Generation inside Spark: the model is loaded once per Python worker and reused across tasks.

_MODEL_CACHE: dict[tuple[str, str, str], tuple] = {}
_MODEL_LOCK = threading.Lock()  # Sail runs tasks as threads of one process: load once, not per task


def task_device() -> str:
    """The GPU this Spark task was given (Databricks sets task GPU resources), else cuda or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
    except Exception:  # Sail and Spark Connect workers may have no task resources
        gpus = None
    if gpus is not None and gpus.addresses:
        address = gpus.addresses[0]
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        # Resource addresses are physical ids; CUDA renumbers from 0 inside CUDA_VISIBLE_DEVICES.
        index = visible.index(address) if address in visible else int(address)
        return f"cuda:{index}"
    return "cuda"


def cached_model(model_dir: str, device: str | None = None, version: str = ""):
    from dolly_spark.serve.generate import load_for_generation

    device = device or task_device()
    key = (model_dir, version, device)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            t0 = time.time()
            _MODEL_CACHE[key] = load_for_generation(model_dir, device=device)
            log.info("loaded %s on %s in %.1fs", model_dir, device, time.time() - t0)
        return _MODEL_CACHE[key]


def generation_udf(model_dir: str, gen: GenerationConfig, version: str = ""):
    """A pandas iterator UDF (instruction, context) -> struct<RESULT_DDL>.

    Each Arrow batch is generated with length-sorted, left-padded batches of ``gen.batch_size``.
    """

    def generate_batches(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        from dolly_spark.serve.generate import generate_responses

        model, tokenizer = cached_model(model_dir, version=version)
        for instructions, contexts in batches:
            contexts = contexts.where(contexts.notna(), None)
            rows = generate_responses(model, tokenizer, instructions.tolist(), contexts.tolist(), gen)
            yield pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).astype(
                {"prompt_tokens": "int64", "completion_tokens": "int64"}
            )

    return F.pandas_udf(generate_batches, RESULT_DDL)


def mlflow_generation_udf(spark, pyfunc_uri: str, gen: GenerationConfig):
    """``mlflow.pyfunc.spark_udf`` over the logged pyfunc (same generate code, MLflow's loader)."""
    import mlflow.pyfunc

    params = {
        "max_new_tokens": gen.max_new_tokens,
        "top_p": gen.top_p,
        "top_k": gen.top_k,
        "temperature": gen.temperature,
        "greedy": gen.greedy,
        "batch_size": gen.batch_size,
    }
    udf = mlflow.pyfunc.spark_udf(spark, pyfunc_uri, result_type=RESULT_DDL, env_manager="local", params=params)
    return lambda instruction, context: udf(
        F.struct(F.col(instruction).alias("instruction"), F.col(context).alias("context"))
    )


def with_generation(df, model: ResolvedModel, gen: GenerationConfig, udf_mode: str = "pandas_iter", spark=None):
    """Add the RESULT_COLUMNS to ``df`` (which must have ``instruction`` and ``context``)."""
    if udf_mode == "pandas_iter":
        udf = generation_udf(model.local_dir, gen, model.version)
    elif udf_mode == "spark_udf":
        if model.pyfunc_uri is None:
            raise ValueError(
                "udf_mode spark_udf needs an MLflow model URI (models:/, runs:/ or a saved MLflow model dir)"
            )
        udf = mlflow_generation_udf(spark, model.pyfunc_uri, gen)
    else:
        raise ValueError(f"unknown udf_mode {udf_mode!r}; known: {UDF_MODES}")
    out = df.withColumn("_gen", udf("instruction", "context"))
    return out.select(*[c for c in df.columns], *[F.col(f"_gen.{c}").alias(c) for c in RESULT_COLUMNS])


# ---------------------------------------------------------------------------------------------
# Input, keys and the idempotent write.


def with_row_key(df):
    """row_key = sha256(record_id, instruction, context): the record's id when the input has one
    (so two records with the same prompt are scored separately), and always its content (so an
    edited record is scored again). Null and empty context give the same prompt, so the same key."""
    rid = F.coalesce(F.col("record_id").cast("string"), F.lit("")) if "record_id" in df.columns else F.lit("")
    ctx = F.coalesce(F.col("context"), F.lit(""))
    return df.withColumn("row_key", F.sha2(F.concat_ws("\u001f", rid, F.col("instruction"), ctx), 256))


def read_input(cfg: ScoreConfig, spark, names: tables.TableNames):
    if cfg.query:
        df = spark.sql(cfg.query)  # user SQL, run as given (CLI only); nothing is spliced into it
    elif cfg.input_table in tables.LOGICAL_TABLES:
        df = manifest.read_committed(spark, names, cfg.input_table)  # prepare's tables: the committed set
    else:
        parts = cfg.input_table.split(".")
        if not 1 <= len(parts) <= 3:
            raise tables.InvalidIdentifierError(f"invalid table name {cfg.input_table!r}")
        for p in parts:
            tables.validate_identifier(p, "table name part")
        df = spark.table(cfg.input_table)
    if "instruction" not in df.columns:
        raise ValueError(f"input has no instruction column (columns: {df.columns})")
    if "context" not in df.columns:
        df = df.withColumn("context", F.lit(None).cast("string"))
    if cfg.split != ALL_SPLITS and "split" in df.columns:
        df = df.filter(F.col("split") == F.lit(cfg.split))
    drop = [c for c in cfg.drop_columns if c in df.columns]
    df = df.drop(*drop) if drop else df
    # Input columns named like an output column keep their values under another name; gold's
    # response is the human reference answer.
    for c in [c for c in df.columns if c in OUTPUT_ONLY_COLUMNS]:
        df = df.withColumnRenamed(c, "reference_response" if c == "response" else f"input_{c}")
    return df


def chunked(pending, n_pending: int, chunk_rows: int, spark, target: tables.TableRef, run_id: str):
    """Yield (chunk number, DataFrame) covering ``pending`` once, about ``chunk_rows`` rows each.

    Several chunks: the pending rows are written once to a staging table with a ``_chunk`` column
    (a hash of row_key), so the input query and anti-join run once, not once per chunk.
    """
    n_chunks = max(1, -(-int(n_pending) // max(1, int(chunk_rows))))
    if n_chunks == 1:
        yield 0, n_chunks, pending
        return
    ref = staging_ref(target, f"{run_id}_pending")
    bucket = F.pmod(F.xxhash64("row_key"), F.lit(n_chunks))
    try:
        tables.write_table(spark, pending.withColumn("_chunk", bucket), ref, partition_by=["_chunk"])
        frame = tables.read_table(spark, ref)
        for k in range(n_chunks):
            yield k, n_chunks, frame.where(F.col("_chunk") == F.lit(k)).drop("_chunk")
    finally:
        drop_staging(spark, ref)


def score_chunk(cfg: ScoreConfig, spark, chunk, model: ResolvedModel, gen: GenerationConfig, staged) -> dict:
    """Generate one chunk into the staging table ``staged``; returns its row and token counts."""
    if cfg.num_partitions:
        chunk = chunk.repartition(int(cfg.num_partitions), "row_key")
    scored = with_generation(chunk, model, gen, cfg.udf_mode, spark).select(
        *chunk.columns,
        *RESULT_COLUMNS,
        F.lit(cfg.model_uri).alias("model_uri"),
        F.lit(model.version).alias("model_version"),
        F.lit(json.dumps(asdict(gen), sort_keys=True)).alias("generation_config"),
        F.current_timestamp().alias("scored_at"),
    )
    # Stage first: the UDF runs exactly once, and a MERGE retry does not regenerate.
    tables.write_table(spark, scored, staged, mode="overwrite")
    row = (
        tables.read_table(spark, staged)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.col("error")).alias("failed"),
            F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
            F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
        )
        .collect()[0]
    )
    return {k: int(row[k]) for k in ("rows", "failed", "prompt_tokens", "completion_tokens")}


def run(cfg: ScoreConfig, spark, after_chunk=None) -> ScoreResult:
    """Score the pending rows chunk by chunk, each chunk one idempotent MERGE.

    ``after_chunk(k, inserted)`` runs after chunk ``k`` is committed (tests inject failures there).
    """
    t0 = time.time()
    names = cfg.table_names()
    target = names.ref(cfg.output_table)
    model = resolve_model(cfg.model_uri, shared_download_dir(cfg.download_dir, cfg.output_root, engine_name()))
    gen = cfg.generation_config()
    log.info("[1/4] model %s -> version %s", cfg.model_uri, model.version)

    source = with_row_key(read_input(cfg, spark, names))
    if cfg.limit:
        source = source.orderBy("row_key").limit(int(cfg.limit))  # the same rows on every rerun
    total = source.count()
    unique = source.dropDuplicates(["row_key"])
    duplicates = total - unique.count()

    pending = unique
    if tables.table_exists(spark, target):
        done = tables.read_table(spark, target).filter(F.col("model_version") == F.lit(model.version)).select("row_key")
        pending = anti_join(unique, done, "row_key")
    n_pending = pending.count()
    log.info("[2/4] %d input rows, %d duplicate keys, %d to score", total, duplicates, n_pending)
    result = ScoreResult(0, total - duplicates, 0, total, None, cfg.model_uri, model.version, duplicates)
    if n_pending == 0:
        result.predictions_version = tables.table_version(spark, target) if tables.table_exists(spark, target) else None
        result.seconds = time.time() - t0
        return result

    remove_stale_staging(spark, target, cfg.stale_staging_hours)
    run_id = uuid.uuid4().hex[:12]
    tokens = {"prompt_tokens": 0, "completion_tokens": 0, "rows": 0}
    # closing(): a failure mid-loop drops the pending table now, not when the generator is collected.
    with contextlib.closing(chunked(pending, n_pending, cfg.chunk_rows, spark, target, run_id)) as chunks:
        for k, n_chunks, chunk in chunks:
            staged = staging_ref(target, f"{run_id}_c{k}")
            try:
                t_gen = time.time()
                counts = score_chunk(cfg, spark, chunk, model, gen, staged)
                result.generate_seconds += time.time() - t_gen
                if counts["rows"] == 0:  # a hash bucket can be empty: nothing to commit
                    continue
                for key in tokens:
                    tokens[key] += counts[key]
                ensure_table(spark, tables.read_table(spark, staged), target)
                inserted = merge_new_rows(spark, staged, target)
            finally:
                drop_staging(spark, staged)
            result.scored += inserted
            result.failed += counts["failed"]
            result.chunks += 1
            log.info(
                "[3/4] chunk %d/%d: %d rows (%d failed), %d merged, %.0f rows/s so far",
                k + 1,
                n_chunks,
                counts["rows"],
                counts["failed"],
                inserted,
                tokens["rows"] / max(result.generate_seconds, 1e-9),
            )
            if after_chunk is not None:
                after_chunk(k, inserted)
    result.skipped = total - duplicates - result.scored
    result.predictions_version = tables.table_version(spark, target)
    if result.generate_seconds > 0:
        result.rows_per_s = tokens["rows"] / result.generate_seconds
        result.tokens_per_s = tokens["completion_tokens"] / result.generate_seconds
        result.prompt_tokens_per_s = tokens["prompt_tokens"] / result.generate_seconds
    result.seconds = time.time() - t0
    log.info("[4/4] merged %d new rows into %s@%d", result.scored, target.name, result.predictions_version)
    return result
