"""Candidates -> gold: Dolly prompts, GPT-NeoX tokens, a stable train/eval split and a packing plan.

Stages are pure ``DataFrame -> DataFrame`` functions sharing one ``GoldConfig``:

    format_prompts -> tokenize -> flag_too_many_tokens -> collect_reasons -> assign_split -> plan_packing

``build_gold`` chains them and keeps every row, with ``reasons``/``reason`` set on the rejected
ones (``too_long``, ``response_key_missing``); ``gold_rows`` and ``gold_quarantine_rows`` split
the result. Records longer than ``max_seq_len`` are never truncated.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import ArrayType, IntegerType, LongType, StringType, StructField, StructType

from dolly_spark.ops.schemas import GOLD_TYPES, QUARANTINE_SCHEMA
from dolly_spark.prep.clean import RULE_PREFIX, collect_reasons, to_quarantine, with_source
from dolly_spark.text import prompts
from dolly_spark.text.tokenizer import default_tokenizer, load_fast_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
# sha2 hex digits turned into the split's uniform number: 13 hex digits = 52 bits, exact in a double.
_SPLIT_HASH_DIGITS = 13
ALL_CATEGORIES = "*"  # the category value of the per-split summary rows in length_stats


@dataclass(frozen=True)
class GoldConfig:
    tokenizer: str = field(
        default_factory=default_tokenizer,
        metadata={"help": "tokenizer hub id or local dir with tokenizer.json (env DOLLY_TOKENIZER)"},
    )
    max_seq_len: int = field(default=2048, metadata={"help": "longer records go to quarantine as too_long"})
    eval_size: int = field(default=1000, metadata={"help": "eval records expected out of eval_reference_rows"})
    eval_reference_rows: int = field(
        default=15011,
        metadata={
            "help": "row count eval_size refers to; eval fraction = eval_size / eval_reference_rows "
            "(a constant, so adding records never moves existing ones)"
        },
    )
    split_seed: int = field(default=42, metadata={"help": "salt of the record_id hash that assigns the split"})
    pack_separator_tokens: int = field(
        default=0,
        metadata={"help": "tokens the collator appends per record (e.g. 1 for an EOS); counted against max_seq_len"},
    )

    def __post_init__(self):
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be at least 8, got {self.max_seq_len}")
        if not 0 < self.eval_size < self.eval_reference_rows:
            raise ValueError(
                f"need 0 < eval_size < eval_reference_rows, got {self.eval_size} and {self.eval_reference_rows}"
            )
        if self.pack_separator_tokens < 0:
            raise ValueError("pack_separator_tokens must be >= 0")

    @property
    def eval_fraction(self) -> float:
        return self.eval_size / self.eval_reference_rows

    @property
    def pack_budget(self) -> int:
        """Tokens in one packed row: the model context, so a pack never exceeds max_seq_len."""
        return self.max_seq_len


# ---------------------------------------------------------------------------------------------
# 1. prompts


# Types as objects, not DDL strings: DDL needs a live session at import time.
_FORMAT_TYPE = StructType([StructField("prompt", StringType()), StructField("text", StringType())])
_TOKENS_TYPE = StructType(
    [
        StructField("input_ids", ArrayType(IntegerType())),
        StructField("prompt_len", IntegerType()),
        StructField("seq_len", IntegerType()),
    ]
)


def _format_udf():
    # Built per call: a UDF made at import time binds to classic Spark, not the Connect session.
    @pandas_udf(_FORMAT_TYPE)
    def format_batch(instruction: pd.Series, context: pd.Series, response: pd.Series) -> pd.DataFrame:
        # The templates live in dolly_spark.text.prompts only; training and inference import the same ones.
        prompt = [prompts.format_prompt(i, c) for i, c in zip(instruction, context)]
        text = [prompts.format_text(i, c, r) for i, c, r in zip(instruction, context, response)]
        return pd.DataFrame({"prompt": prompt, "text": text})

    return format_batch


def format_prompts(df: DataFrame) -> DataFrame:
    """Add ``prompt`` (up to and including ``### Response:\\n``) and the full training ``text``."""
    formatted = _format_udf()(F.col("instruction"), F.coalesce(F.col("context"), F.lit("")), F.col("response"))
    return df.withColumn("_fmt", formatted).select("*", "_fmt.prompt", "_fmt.text").drop("_fmt")


# ---------------------------------------------------------------------------------------------
# 2. tokens


@functools.lru_cache(maxsize=4)
def cached_tokenizer(src: str):
    """One tokenizer per worker process and source (UDF batches reuse it)."""
    return load_fast_tokenizer(src)


def response_boundary_ids(tok) -> tuple[int, int]:
    """(``### Response:`` special token id, newline id): the prompt ends with exactly these two."""
    key = tok.token_to_id(prompts.RESPONSE_KEY)
    ids = tok.encode(prompts.RESPONSE_KEY_NL, add_special_tokens=False).ids
    if key is None or len(ids) != 2 or ids[0] != key:
        raise RuntimeError(f"{prompts.RESPONSE_KEY_NL!r} does not tokenize as one special token + newline: {ids}")
    return key, ids[1]


def tokenize_texts(tok, texts: list[str]) -> tuple[list[list[int]], list[int | None]]:
    """Token ids of each text and its prompt length (tokens through ``### Response:`` + newline).

    The boundary is found in the ids of the full text, as Dolly's collator does, so prompt_len
    always indexes the same ids training sees. None when the response key is missing.
    """
    key, newline = response_boundary_ids(tok)
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    prompt_lens: list[int | None] = []
    for seq in ids:
        try:
            at = seq.index(key)
        except ValueError:
            prompt_lens.append(None)
            continue
        prompt_lens.append(at + 2 if at + 1 < len(seq) and seq[at + 1] == newline else None)
    return ids, prompt_lens


def _tokenize_udf(src: str):
    @pandas_udf(_TOKENS_TYPE)
    def tokenize_batches(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        tok = cached_tokenizer(src)
        for texts in batches:
            ids, prompt_lens = tokenize_texts(tok, texts.tolist())
            yield pd.DataFrame(
                {
                    "input_ids": ids,
                    "prompt_len": pd.array(prompt_lens, dtype="Int32"),
                    "seq_len": pd.array([len(s) for s in ids], dtype="Int32"),
                }
            )

    return tokenize_batches


def tokenize(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """Add ``input_ids`` (full text incl. ``### End``; no EOS, no padding), ``prompt_len``, ``seq_len``."""
    toks = _tokenize_udf(cfg.tokenizer)(F.col("text"))
    return df.withColumn("_tok", toks).select("*", "_tok.input_ids", "_tok.prompt_len", "_tok.seq_len").drop("_tok")


# ---------------------------------------------------------------------------------------------
# 3. rules (no silent drops: a reason per rejected row)


def flag_too_many_tokens(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """seq_len (+ separator tokens) > max_seq_len: quarantined as ``too_long``, never truncated."""
    return df.withColumn(
        RULE_PREFIX + "too_long",
        F.when(F.col("seq_len") + F.lit(cfg.pack_separator_tokens) > cfg.max_seq_len, F.lit("too_long")).otherwise(
            F.lit(None).cast("string")
        ),
    )


def flag_response_key_missing(df: DataFrame) -> DataFrame:
    """No ``### Response:`` + newline token pair: the loss mask would be wrong, so quarantine."""
    return df.withColumn(
        RULE_PREFIX + "response_key_missing",
        F.when(F.col("prompt_len").isNull(), F.lit("response_key_missing")).otherwise(F.lit(None).cast("string")),
    )


# ---------------------------------------------------------------------------------------------
# 4. split


def split_unit(record_id: str, seed: int) -> float:
    """The split hash in plain Python, equal to ``assign_split``'s: sha256("seed:record_id") in [0, 1)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()
    return int(digest[:_SPLIT_HASH_DIGITS], 16) / 16**_SPLIT_HASH_DIGITS


def split_unit_col(seed: int):
    digest = F.sha2(F.concat_ws(":", F.lit(str(int(seed))), F.col("record_id")), 256)
    top = F.conv(F.substring(digest, 1, _SPLIT_HASH_DIGITS), 16, 10).cast("long")
    return top.cast("double") / F.lit(float(16**_SPLIT_HASH_DIGITS))


def assign_split(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """``eval`` iff sha256(seed:record_id) falls below eval_fraction, else ``train``.

    The test depends on the record alone and a constant fraction, so adding records (or whole
    sources) never moves existing ones. Applied within every (source, category) stratum alike,
    each stratum gets the same expected eval share (stratified in expectation; the realised
    counts per source and category are in gold_stats).
    """
    return df.withColumn(
        "split", F.when(split_unit_col(cfg.split_seed) < F.lit(cfg.eval_fraction), "eval").otherwise("train")
    )


# ---------------------------------------------------------------------------------------------
# 5. packing plan


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


def _pack_split(budget: int, separator: int):
    def pack(table: pa.Table) -> pa.Table:
        ok = pc.is_null(table["reason"]).to_pylist() if "reason" in table.column_names else [True] * table.num_rows
        at = [i for i, good in enumerate(ok) if good]
        ids, lengths = table["record_id"].to_pylist(), table["seq_len"].to_pylist()
        packs = best_fit_decreasing([ids[i] for i in at], [lengths[i] for i in at], budget, separator)
        pack_id: list[int | None] = [None] * table.num_rows
        for i, p in zip(at, packs):
            pack_id[i] = p
        return table.append_column("pack_id", pa.array(pack_id, pa.int64()))

    return pack


def plan_packing(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """Add ``pack_id``: rows sharing (split, pack_id) fit in one row of ``pack_budget`` tokens.

    One Arrow group per split carries every column through (no self-join, so the tokenizer runs
    once per consumer: Sail's ``cache()`` is a no-op). Rows with a reject reason get a null pack_id.
    """
    schema = StructType(df.schema.fields + [StructField("pack_id", LongType())])
    return df.groupBy("split").applyInArrow(_pack_split(cfg.pack_budget, cfg.pack_separator_tokens), schema)


# ---------------------------------------------------------------------------------------------
# assembly


def source_weight(weights: dict[str, int] | None):
    """The ``weight`` column: the record's source weight (1 when the source has none)."""
    w = F.lit(1)
    for name, k in sorted((weights or {}).items()):
        w = F.when(F.col("source") == F.lit(name), F.lit(int(k))).otherwise(w)
    return w.cast("int")


def build_gold(
    candidates: DataFrame, cfg: GoldConfig, silver_version: int | None, weights: dict[str, int] | None = None
) -> DataFrame:
    """Every candidate row with gold columns plus ``reasons``/``reason`` (null reason = gold)."""
    base = candidates.transform(with_source).select(
        "record_id", "instruction", "context", "response", "category", "source_file", "line_number", "source"
    )
    return (
        base.transform(format_prompts)
        .transform(lambda d: tokenize(d, cfg))
        .transform(lambda d: flag_too_many_tokens(d, cfg))
        .transform(flag_response_key_missing)
        .transform(collect_reasons)
        .transform(lambda d: assign_split(d, cfg))
        .transform(lambda d: plan_packing(d, cfg))
        .withColumn("silver_version", F.lit(silver_version).cast("long"))
        .withColumn("weight", source_weight(weights))
    )


def gold_rows(df: DataFrame) -> DataFrame:
    return df.where(F.col("reason").isNull()).select(*[F.col(c).cast(t).alias(c) for c, t in GOLD_TYPES])


def gold_quarantine_rows(df: DataFrame) -> DataFrame:
    """Rejected rows shaped like the quarantine table (stage ``gold``, reason ``too_long``, ...)."""
    return to_quarantine(df.where(F.col("reason").isNotNull()), "gold")


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


def write_gold(
    spark,
    names,
    candidates: DataFrame,
    cfg: GoldConfig,
    silver_version: int | None,
    other_quarantine: pa.Table | None = None,
    input_rows: int | None = None,
    weights: dict[str, int] | None = None,
) -> dict:
    """Write gold (overwrite), put its rejects in quarantine (stage ``gold``), write gold_stats.

    The full tokenization runs once, for the gold write. Rejects are then the candidates missing
    from gold, rebuilt on their own (a handful of rows) to get their reasons. Returns versions and
    counts; raises if input rows != gold + quarantined.
    """
    from dolly_spark.ops import tables
    from dolly_spark.prep.accounting import AccountingError

    versions = {
        "gold": tables.write_table(
            spark,
            gold_rows(build_gold(candidates, cfg, silver_version, weights)),
            names.gold,
            comment=f"Dolly-formatted, tokenized ({cfg.tokenizer}) train/eval records with a packing plan",
        )
    }
    gold = tables.read_table(spark, names.gold)
    missing = candidates.join(gold.select("record_id"), on="record_id", how="left_anti")
    rejected = gold_quarantine_rows(build_gold(missing, cfg, silver_version)).toArrow()  # a handful of rows
    # Rewrite quarantine as (other stages' rows + these) in one commit: re-running gold alone
    # replaces its earlier rejects instead of appending them twice. Quarantine is small.
    # ``other_quarantine``: the earlier stages' rejects of this same run, not yet committed, so
    # the quarantine table gets exactly one commit per prepare run (old or new, never between).
    kept = other_quarantine
    if kept is None and tables.table_exists(spark, names.quarantine):
        kept = tables.read_table(spark, names.quarantine).where(F.col("stage") != "gold").toArrow()
    if kept is not None:
        rejected = rejected.select(kept.column_names).cast(kept.schema)
    combined = rejected if kept is None else pa.concat_tables([kept, rejected])
    frame = spark.createDataFrame(combined) if combined.num_rows else spark.createDataFrame([], QUARANTINE_SCHEMA)
    versions["quarantine"] = tables.write_table(spark, frame, names.quarantine)
    versions["gold_stats"] = tables.write_table(
        spark,
        length_stats(gold, cfg.pack_budget),
        names.gold_stats,
        comment="gold sequence lengths and packing plan summary",
    )
    reasons = dict(Counter(rejected["reason"].to_pylist()))
    by_split = {r["split"]: int(r["count"]) for r in gold.groupBy("split").count().collect()}
    result = {
        "versions": versions,
        "input_rows": int(candidates.count()) if input_rows is None else int(input_rows),  # caller's count saves a job
        "gold_rows": sum(by_split.values()),
        "quarantined_rows": sum(reasons.values()),
        "quarantined_by_reason": reasons,
        "by_split": by_split,
    }
    if result["input_rows"] != result["gold_rows"] + result["quarantined_rows"]:
        raise AccountingError(
            f"gold: input {result['input_rows']} != gold {result['gold_rows']} + quarantined {result['quarantined_rows']}"
        )
    return result
