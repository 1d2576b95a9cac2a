"""``dolly-spark evaluate``: response-token loss and perplexity per category on gold's eval split,
plus generations for a fixed, hash-chosen sample written to ``eval_generations``.

Loss is computed where the data is: a pandas iterator UDF scores each row's ``input_ids`` (labels
masked before ``prompt_len``, exactly as in training) and returns its summed cross-entropy and token
count; Spark sums them per category, so a category's loss is token-weighted, like the training loss.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd
from pyspark.sql import functions as F

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import TrackedLocation
from dolly_spark.ops.session import engine_name
from dolly_spark.serve.generate import FINISH_END_KEY, GenerationConfig
from dolly_spark.serve.model_download import shared_download_dir
from dolly_spark.serve.score import RESULT_COLUMNS, cached_model, resolve_model, with_generation

log = logging.getLogger(__name__)

LOSS_DDL = "loss_sum double, loss_tokens bigint"
ALL = "all"  # the category value of the overall row in loss_by_category


@dataclass
class EvaluateConfig(TrackedLocation):
    model_uri: str = field(
        default="", metadata={"help": "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH or a local HF model dir"}
    )
    split: str = field(default="eval", metadata={"help": "gold split to evaluate"})
    sample_size: int = field(default=64, metadata={"help": "eval records to generate for (fixed, chosen by hash)"})
    sample_seed: int = field(default=0, metadata={"help": "changes which records the hash picks"})
    loss_batch_size: int = field(default=8, metadata={"help": "sequences per forward pass for the loss"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"flag_prefix": ""})
    download_dir: str | None = field(
        default=None, metadata={"help": "where MLflow models are downloaded (multi-node: a Volume)"}
    )

    def generation_config(self) -> GenerationConfig:
        return self.generation


@dataclass
class EvaluateResult:
    eval_loss: float
    perplexity: float
    loss_by_category: dict[str, float]
    ppl_by_category: dict[str, float]
    generations: int
    eval_generations_version: int | None
    model_uri: str = ""
    model_version: str = ""
    eval_id: str = ""
    loss_tokens: int = 0
    records: int = 0
    failed_generations: int = 0
    # The frames behind the numbers, for the command to log (not part of the summary).
    loss_table: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    generations_table: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    loss_by_source: dict[str, float] = field(default_factory=dict)  # token-weighted, like per category
    gold_table: str = ""  # the gold table evaluated (path, or catalog name) ...
    gold_version: int | None = None  # ... at this Delta version
    generation_checks: dict[str, float] = field(default_factory=dict)  # see generation_checks()


def sequence_losses(
    model, input_ids: list[list[int]], prompt_lens: list[int], batch_size: int = 8
) -> list[tuple[float, int]]:
    """Summed response-token cross-entropy and token count per sequence (labels before
    ``prompt_len`` are -100, as in training). Sequences longer than the context are cut to it."""
    import torch

    window = int(getattr(model.config, "max_position_embeddings", 2048))
    device = next(model.parameters()).device
    out: list[tuple[float, int] | None] = [None] * len(input_ids)
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))  # less padding
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start : start + batch_size]
        seqs = [list(input_ids[i])[:window] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, (i, s) in enumerate(zip(idx, seqs)):
            ids[row, : len(s)] = torch.tensor(s)
            attention[row, : len(s)] = 1
            first = max(1, int(prompt_lens[i]))  # position 0 has no prediction
            if first < len(s):
                labels[row, first : len(s)] = torch.tensor(s[first:])
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1).to(device)
        token_loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="none")
        token_loss = token_loss.view(len(idx), width - 1)
        counts = (labels[:, 1:] != -100).sum(dim=1).tolist()
        sums = token_loss.sum(dim=1).tolist()
        for row, i in enumerate(idx):
            out[i] = (float(sums[row]), int(counts[row]))
    return out  # type: ignore[return-value]


def loss_udf(model_dir: str, version: str, batch_size: int):
    def score_batches(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        model, _ = cached_model(model_dir, version=version)
        for ids, prompt_lens in batches:
            res = sequence_losses(model, ids.tolist(), prompt_lens.fillna(0).astype(int).tolist(), batch_size)
            yield pd.DataFrame(res, columns=["loss_sum", "loss_tokens"]).astype({"loss_tokens": "int64"})

    return F.pandas_udf(score_batches, LOSS_DDL)


def loss_by_category(rows: pd.DataFrame) -> pd.DataFrame:
    """category, records, loss_tokens, loss, perplexity; plus one ``all`` row (token-weighted)."""
    total = pd.DataFrame(
        [
            {
                "category": ALL,
                "records": rows["records"].sum(),
                "loss_sum": rows["loss_sum"].sum(),
                "loss_tokens": rows["loss_tokens"].sum(),
            }
        ]
    )
    out = pd.concat([rows.sort_values("category"), total], ignore_index=True)
    out["loss"] = [s / n if n else float("nan") for s, n in zip(out["loss_sum"], out["loss_tokens"])]
    out["perplexity"] = [math.exp(v) if v == v else float("nan") for v in out["loss"]]
    return out[["category", "records", "loss_tokens", "loss", "perplexity"]]


def fixed_sample(df, size: int, seed: int = 0):
    """The same ``size`` records on every run and engine: smallest sha2(seed, record_id)."""
    key = F.sha2(F.concat_ws(":", F.lit(str(seed)), F.col("record_id").cast("string")), 256)
    return df.withColumn("_sample_key", key).orderBy("_sample_key", "record_id").limit(int(size)).drop("_sample_key")


# The stages of ``run``: the eval frame, loss sums in Spark, their summary, the generations, the result.


def pinned_eval_frame(spark, names: tables.TableNames, split: str):
    """(gold's rows of ``split`` at the version the last completed prepare run committed, that version)."""
    version = manifest.pinned_version(spark, names, "gold")
    return split_frame(spark, names.gold, version, split), version


def split_frame(spark, gold_ref: tables.TableRef, version: int, split: str):
    """Gold's rows of ``split`` at ``version``: the pinned eval set two models are compared on."""
    return tables.read_table(spark, gold_ref, int(version)).filter(F.col("split") == F.lit(split))


def loss_sums(gold, model, cfg: EvaluateConfig) -> pd.DataFrame:
    """records, loss_sum and loss_tokens per (category, source), summed in Spark in one pass."""
    return category_loss_sums(gold, model, cfg.loss_batch_size, cfg.split)


def category_loss_sums(gold, model, batch_size: int = 8, split: str = "eval") -> pd.DataFrame:
    """``loss_sums`` for any frame of gold rows (``split`` only names them in the error)."""
    source = F.col("source") if "source" in gold.columns else F.lit(None).cast("string")
    per_row = gold.select(
        "category",
        F.coalesce(source, F.lit("")).alias("source"),
        loss_udf(model.local_dir, model.version, batch_size)("input_ids", "prompt_len").alias("l"),
    ).select("category", "source", "l.*")
    agg = (
        per_row.groupBy("category", "source")
        .agg(
            F.count(F.lit(1)).alias("records"),
            F.sum("loss_sum").alias("loss_sum"),
            F.sum("loss_tokens").alias("loss_tokens"),
        )
        .toPandas()
    )
    if agg.empty:
        raise ValueError(f"gold has no rows with split = {split!r}")
    return agg


def summarise_losses(agg: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """(loss_by_category frame with its ``all`` row, token-weighted loss per named source)."""
    sums = ["records", "loss_sum", "loss_tokens"]
    losses = loss_by_category(agg.groupby("category", as_index=False)[sums].sum())
    by_source = agg.groupby("source")[sums].sum()
    loss_by_source = {
        str(s): float(r["loss_sum"] / r["loss_tokens"]) if r["loss_tokens"] else float("nan")
        for s, r in by_source.iterrows()
        if s
    }
    return losses, loss_by_source


def generated_sample(gold, model, size: int, seed: int, gen: GenerationConfig):
    """The fixed sample of ``size`` records (``fixed_sample``) with the model's RESULT_COLUMNS."""
    sample = fixed_sample(gold, size, seed).select(
        "record_id", "category", "instruction", "context", F.col("response").alias("reference_response")
    )
    return with_generation(sample, model, gen, "pandas_iter"), sample.columns


def generation_checks(generations: pd.DataFrame) -> dict[str, float]:
    """What a sample's generations look like: the share of rows that stopped at ``### End``
    (``end_share``), the share with an empty response (``empty_share``, failed rows included) and
    the median completion length in tokens (``median_tokens``). Empty dict for no rows."""
    if generations is None or not len(generations):
        return {}
    ended = generations["finish_reason"].eq(FINISH_END_KEY) & generations["error"].isna()
    empty = generations["response"].fillna("").astype(str).str.strip().eq("")
    return {
        "end_share": float(ended.mean()),
        "empty_share": float(empty.mean()),
        "median_tokens": float(generations["completion_tokens"].fillna(0).median()),
    }


def write_generations(spark, names: tables.TableNames, gold, model, cfg: EvaluateConfig, eval_id: str):
    """Generate for the fixed sample and append it to ``eval_generations`` under ``eval_id``.
    Returns (the table's version, this run's rows as pandas, by record_id)."""
    sampled, columns = generated_sample(gold, model, cfg.sample_size, cfg.sample_seed, cfg.generation_config())
    generated = sampled.select(
        F.lit(eval_id).alias("eval_id"),
        F.lit(cfg.model_uri).alias("model_uri"),
        F.lit(model.version).alias("model_version"),
        *columns,
        *RESULT_COLUMNS,
        F.current_timestamp().alias("evaluated_at"),
    )
    # Append: one eval_id per run, so evaluations of several models sit side by side.
    version = tables.write_table(
        spark,
        generated,
        names.eval_generations,
        mode="append",
        comment="eval-sample generations per evaluate run (eval_id)",
    )
    generations = (
        tables.read_table(spark, names.eval_generations)
        .filter(F.col("eval_id") == F.lit(eval_id))
        .orderBy("record_id")
        .toPandas()
    )
    return version, generations


def run(cfg: EvaluateConfig, spark) -> EvaluateResult:
    t0 = time.time()
    names = cfg.table_names()
    model = resolve_model(cfg.model_uri, shared_download_dir(cfg.download_dir, cfg.output_root, engine_name()))
    eval_id = uuid.uuid4().hex
    gold, gold_version = pinned_eval_frame(spark, names, cfg.split)

    losses, loss_by_source = summarise_losses(loss_sums(gold, model, cfg))
    overall = losses[losses["category"] == ALL].iloc[0]
    log.info(
        "[1/2] eval loss %.4f (ppl %.2f) over %d records, %d tokens (%.1fs)",
        overall["loss"],
        overall["perplexity"],
        overall["records"],
        overall["loss_tokens"],
        time.time() - t0,
    )

    version, generations = write_generations(spark, names, gold, model, cfg, eval_id)
    log.info(
        "[2/2] %d generations -> %s@%d (%.1fs)",
        len(generations),
        names.eval_generations.name,
        version,
        time.time() - t0,
    )

    cats = losses[losses["category"] != ALL]
    return EvaluateResult(
        eval_loss=float(overall["loss"]),
        perplexity=float(overall["perplexity"]),
        loss_by_category=dict(zip(cats["category"], cats["loss"].astype(float))),
        ppl_by_category=dict(zip(cats["category"], cats["perplexity"].astype(float))),
        generations=len(generations),
        eval_generations_version=version,
        model_uri=cfg.model_uri,
        model_version=model.version,
        eval_id=eval_id,
        loss_tokens=int(overall["loss_tokens"]),
        records=int(overall["records"]),
        failed_generations=int(generations["error"].notna().sum()),
        loss_table=losses,
        generations_table=generations,
        loss_by_source=loss_by_source,
        gold_table=names.gold.path or names.gold.name,
        gold_version=int(gold_version),
        generation_checks=generation_checks(generations),
    )
