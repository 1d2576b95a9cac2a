"""Candidates -> gold: Dolly prompts, GPT-NeoX tokens, a stable train/eval split and a packing plan.

Stages are pure ``DataFrame -> DataFrame`` functions sharing one ``GoldConfig``:

    tokenize_records (one Arrow pass) -> flag_too_many_tokens -> collect_reasons
    -> assign_split -> (checkpoint) -> plan_packing -> format_prompts; gold_stats.length_stats summarises

``build_gold`` chains them and keeps every row, with ``reasons``/``reason`` set on the rejected
ones (``special_token_in_text``, ``too_long``, ``response_key_missing``); ``gold_rows`` and ``gold_quarantine_rows`` split
the result. Records longer than ``max_record_tokens`` are never truncated.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

from dolly_spark.ops.schemas import GOLD_TYPES, QUARANTINE_SCHEMA
from dolly_spark.ops.workdir import WorkDir
from dolly_spark.prep.clean import RULE_PREFIX, TEXT_FIELDS, collect_reasons, to_quarantine, with_source
from dolly_spark.prep.gold_stats import length_stats
from dolly_spark.prep.packing import plan_packing
from dolly_spark.text import prompts
from dolly_spark.text.model_config import PYTHIA_CONTEXT, model_max_positions
from dolly_spark.text.tokenizer import default_tokenizer, load_fast_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
# sha2 hex digits turned into the split's uniform number: 13 hex digits = 52 bits, exact in a double.
_SPLIT_HASH_DIGITS = 13


@dataclass(frozen=True)
class GoldConfig:
    tokenizer: str = field(
        default_factory=default_tokenizer,
        metadata={"help": "tokenizer hub id or local dir with tokenizer.json (env DOLLY_TOKENIZER)"},
    )
    max_record_tokens: int | None = field(
        default=None,
        metadata={
            "help": "records of more tokens go to quarantine as too_long, never cut "
            "(default: --base-model's context, else 2048)"
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "the model to fine-tune (id, dir or config.json): its context sets max_record_tokens"},
    )
    # Dolly's train_dolly.py passes --test-size 200 (trainer.py's own default, 1000, is overridden).
    eval_size: int = field(default=200, metadata={"help": "eval records expected out of eval_reference_rows"})
    eval_reference_rows: int = field(
        default=15011,
        metadata={
            "help": "row count eval_size refers to; eval fraction = eval_size / eval_reference_rows "
            "(a constant, so adding records never moves existing ones)"
        },
    )
    split_seed: int = field(default=42, metadata={"help": "salt of the record_id hash that assigns the split"})
    pack_group_rows: int = field(
        default=20000,
        metadata={
            "help": "records per packing group: each split is cut into ceil(rows / this) hash groups "
            "packed in parallel (one Python task each)"
        },
    )
    pack_separator_tokens: int = field(
        default=0,
        metadata={
            "help": "tokens the collator appends per record (e.g. 1 for an EOS); counted against max_record_tokens"
        },
    )

    def __post_init__(self):
        if self.max_record_tokens is not None and self.max_record_tokens < 8:
            raise ValueError(f"max_record_tokens must be at least 8, got {self.max_record_tokens}")
        if not 0 < self.eval_size < self.eval_reference_rows:
            raise ValueError(
                f"need 0 < eval_size < eval_reference_rows, got {self.eval_size} and {self.eval_reference_rows}"
            )
        if self.pack_separator_tokens < 0:
            raise ValueError("pack_separator_tokens must be >= 0")
        if self.pack_group_rows < 1:
            raise ValueError("pack_group_rows must be >= 1")

    @functools.cached_property
    def record_token_limit(self) -> int:
        """``max_record_tokens``, else the base model's context (read once per config), else Pythia's."""
        if self.max_record_tokens is not None:
            return self.max_record_tokens
        return model_max_positions(self.base_model) if self.base_model else PYTHIA_CONTEXT

    @property
    def eval_fraction(self) -> float:
        return self.eval_size / self.eval_reference_rows

    @property
    def pack_budget(self) -> int:
        """Tokens in one packed row: the model context, so a pack never exceeds max_record_tokens."""
        return self.record_token_limit


# ---------------------------------------------------------------------------------------------
# 1. prompts


def format_columns(instruction: list, context: list, response: list) -> tuple[list[str], list[str]]:
    """The prompt and the full training text of each record (templates: ``dolly_spark.text.prompts``)."""
    # The templates live in dolly_spark.text.prompts only; training and inference import the same ones.
    prompt = [prompts.format_prompt(i, c or "") for i, c in zip(instruction, context)]
    return prompt, format_texts(instruction, context, response)


def format_texts(instruction: list, context: list, response: list) -> list[str]:
    """The full training text of each record (``prompts.format_text``)."""
    return [prompts.format_text(i, c or "", r) for i, c, r in zip(instruction, context, response)]


def _with_columns(df: DataFrame, added: list[tuple[str, object]], fn) -> DataFrame:
    """``df`` plus ``added`` (name, Spark type) columns computed by ``fn(batch) -> arrays``, in one
    Arrow pass: a plan node, evaluated once per row (a UDF column may be evaluated once per reader)."""
    schema = StructType([*df.schema.fields, *(StructField(n, t) for n, t in added)])

    def run(batches):
        for batch in batches:
            arrays = fn(batch)
            yield pa.RecordBatch.from_arrays([*batch.columns, *arrays], [*batch.schema.names, *(n for n, _ in added)])

    return df.mapInArrow(run, schema)


def _texts(batch: pa.RecordBatch) -> tuple[list, list, list]:
    return tuple(batch.column(batch.schema.get_field_index(c)).to_pylist() for c in TEXT_FIELDS)


def format_prompts(df: DataFrame) -> DataFrame:
    """Add ``prompt`` (up to and including ``### Response:\\n``) and the full training ``text``."""

    def fn(batch):
        return [pa.array(v, pa.string()) for v in format_columns(*_texts(batch))]

    return _with_columns(df, [("prompt", StringType()), ("text", StringType())], fn)


# ---------------------------------------------------------------------------------------------
# 2. tokens


ENCODE_SLICE = 1024  # texts per encode_batch call


@functools.lru_cache(maxsize=4)
def cached_tokenizer(src: str):
    """One tokenizer per worker process and source (UDF batches reuse it)."""
    return load_fast_tokenizer(src)


def response_boundary_ids(tok) -> tuple[int, ...]:
    """The ids that end every prompt: ``### Response:`` + newline as two ids (the released dolly-v2
    tokenizer, or ours), or one id where ``### Response:\\n`` is itself a special token (a tokenizer
    saved by Dolly's current ``training/trainer.py``)."""
    ids = tuple(tok.encode(prompts.RESPONSE_KEY_NL, add_special_tokens=False).ids)
    key = tok.token_to_id(prompts.RESPONSE_KEY_NL)
    if key is not None and ids == (key,):
        return ids
    if len(ids) != 2 or ids[0] != tok.token_to_id(prompts.RESPONSE_KEY):
        raise RuntimeError(f"{prompts.RESPONSE_KEY_NL!r} is neither one special token nor one + newline: {list(ids)}")
    return ids


def encode_ids(tok, texts: list[str]) -> pa.ListArray:
    """Token ids of each text (no special tokens added), as one Arrow list array."""
    # encode_batch_fast (tokenizers >= 0.21) skips the offsets; older rows only have encode_batch.
    encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    # Small slices: an Encoding holds tokens and masks besides the ids (about 19 KiB per dolly
    # record with offsets), so one 10k-row Arrow batch at once held ~190 MiB per task.
    ids = [
        e.ids
        for at in range(0, len(texts), ENCODE_SLICE)
        for e in encode(texts[at : at + ENCODE_SLICE], add_special_tokens=False)
    ]
    return pa.array(ids, pa.list_(pa.int32()))


def prompt_lengths(ids: pa.ListArray, boundary: tuple[int, ...]) -> pa.Array:
    """Tokens through the first ``boundary[0]`` of each row when ``boundary`` starts there, else null.

    Found in the ids of the full text, as Dolly's collator does, so prompt_len always indexes the
    same ids training sees. Vectorised over the flat ids: no Python loop per token.
    """
    flat = ids.values.to_numpy(zero_copy_only=False)  # offsets index the whole child, sliced or not
    offsets = ids.offsets.to_numpy()
    out = np.full(len(ids), -1, dtype=np.int64)
    hits = np.flatnonzero(flat == boundary[0])
    rows = np.searchsorted(offsets, hits, side="right") - 1
    rows, first = np.unique(rows, return_index=True)  # the first key of each row, as seq.index finds
    at = hits[first]
    ok = at + len(boundary) <= offsets[rows + 1]
    for k, want in enumerate(boundary[1:], start=1):
        ok &= flat[np.minimum(at + k, len(flat) - 1)] == want
    out[rows[ok]] = at[ok] - offsets[rows[ok]] + len(boundary)
    return pa.array(out, pa.int32(), mask=out < 0)


def tokenize_texts(tok, texts: list[str]) -> tuple[list[list[int]], list[int | None]]:
    """Token ids of each text and its prompt length (tokens through ``### Response:`` + newline);
    None when the response key is missing."""
    ids = encode_ids(tok, texts)
    return ids.to_pylist(), prompt_lengths(ids, response_boundary_ids(tok)).to_pylist()


# ---------------------------------------------------------------------------------------------
# 3. rules (no silent drops: a reason per rejected row)


@functools.lru_cache(maxsize=4)
def special_token_strings(src: str) -> frozenset[str]:
    """Every special token of the tokenizer in use (``<|endoftext|>``, ``<|padding|>``, Dolly's keys...).

    Read from the tokenizer itself, not a fixed list: another model family brings its own.
    """
    added = cached_tokenizer(src).get_added_tokens_decoder().values()
    return frozenset(t.content for t in added if t.special and t.content)


def special_token_hits(fields: list[pa.Array], specials: frozenset[str]) -> pa.Array:
    """True where any field holds a special-token string (substring search in Arrow's kernels)."""
    hit = pa.array(np.zeros(len(fields[0]), dtype=bool))
    for field_values in fields:
        for token in sorted(specials):
            hit = pc.or_(hit, pc.fill_null(pc.match_substring(field_values, token), False))
    return hit


def tokenize_records(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """Add ``input_ids`` (the full Dolly text incl. ``### End``; no EOS, no padding), ``prompt_len``,
    ``seq_len`` and the ``special_token_in_text`` rule, in one Arrow pass.

    The text is formatted here for the tokenizer but not kept: ``format_prompts`` adds ``prompt``
    and ``text`` after gold's checkpoint, so the checkpoint does not carry them (5 s of its 27 at
    150k records). A special-token string in user text would become that token (``<|endoftext|>``
    -> id 0 mid-response), the same harm as a stray ``### End``, so such rows are quarantined.
    """
    src = cfg.tokenizer

    def fn(batch):
        tok = cached_tokenizer(src)
        ids = encode_ids(tok, format_texts(*_texts(batch)))
        fields = [batch.column(batch.schema.get_field_index(c)) for c in TEXT_FIELDS]
        special = special_token_hits(fields, special_token_strings(src))
        reason = pc.if_else(special, pa.scalar("special_token_in_text"), pa.scalar(None, pa.string()))
        return [
            ids,
            prompt_lengths(ids, response_boundary_ids(tok)),
            pc.cast(pc.list_value_length(ids), pa.int32()),
            reason,
        ]

    added = [
        ("input_ids", ArrayType(IntegerType())),
        ("prompt_len", IntegerType()),
        ("seq_len", IntegerType()),
        (RULE_PREFIX + "special_token_in_text", StringType()),
    ]
    return _with_columns(df, added, fn)


def flag_too_many_tokens(df: DataFrame, cfg: GoldConfig) -> DataFrame:
    """seq_len (+ separator tokens) > max_record_tokens: quarantined as ``too_long``, never truncated."""
    return df.withColumn(
        RULE_PREFIX + "too_long",
        F.when(
            F.col("seq_len") + F.lit(cfg.pack_separator_tokens) > cfg.record_token_limit, F.lit("too_long")
        ).otherwise(F.lit(None).cast("string")),
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


# 5. the packing plan: dolly_spark.prep.packing


# ---------------------------------------------------------------------------------------------
# assembly


def source_weight(weights: dict[str, int] | None):
    """The ``weight`` column: the record's source weight (1 when the source has none)."""
    w = F.lit(1)
    for name, k in sorted((weights or {}).items()):
        w = F.when(F.col("source") == F.lit(name), F.lit(int(k))).otherwise(w)
    return w.cast("int")


def build_gold(
    candidates: DataFrame,
    cfg: GoldConfig,
    silver_version: int | None,
    n_rows: int | None = None,
    weights: dict[str, int] | None = None,
    checkpoint=None,
) -> DataFrame:
    """Every candidate row with gold columns plus ``reasons``/``reason`` (null reason = gold).

    ``n_rows`` (the candidates' count, when known) sets how many packing groups run in parallel;
    ``weights`` (source -> k) fills the ``weight`` column training staging repeats train rows by.
    ``checkpoint`` (``WorkDir.materialize``) writes the tokenized rows once: the packing plan and
    the join back both read them, so the tokenizer runs once.
    """
    base = candidates.transform(with_source).select(
        "record_id", "instruction", "context", "response", "category", "source_file", "line_number", "source"
    )
    rows = (
        base.transform(lambda d: tokenize_records(d, cfg))
        .transform(lambda d: flag_too_many_tokens(d, cfg))
        .transform(flag_response_key_missing)
        .transform(collect_reasons)
        .transform(lambda d: assign_split(d, cfg))
    )
    if checkpoint is not None:
        rows = checkpoint(rows, "tokenized")
    return (
        rows.transform(lambda d: plan_packing(d, cfg, n_rows))
        .transform(format_prompts)
        .withColumn("silver_version", F.lit(silver_version).cast("long"))
        .withColumn("weight", source_weight(weights))
    )


def gold_rows(df: DataFrame) -> DataFrame:
    return df.where(F.col("reason").isNull()).select(*[F.col(c).cast(t).alias(c) for c, t in GOLD_TYPES])


def gold_quarantine_rows(df: DataFrame) -> DataFrame:
    """Rejected rows shaped like the quarantine table (stage ``gold``, reason ``too_long``, ...)."""
    return to_quarantine(df.where(F.col("reason").isNotNull()), "gold")


def write_gold(
    spark,
    names,
    candidates: DataFrame,
    cfg: GoldConfig,
    silver_version: int | None,
    other_quarantine: pa.Table | None = None,
    input_rows: int | None = None,
    weights: dict[str, int] | None = None,
    work_dir: str | None = None,
) -> dict:
    """Write gold (overwrite), put its rejects in quarantine (stage ``gold``), write gold_stats.

    The full tokenization runs once, into a checkpoint that both the gold write and the rejects
    (with their reasons) read. Returns versions and counts; raises if input rows != gold +
    quarantined.
    """
    from dolly_spark.ops import tables
    from dolly_spark.prep.accounting import AccountingError

    input_rows = int(candidates.count()) if input_rows is None else int(input_rows)  # caller's count saves a job
    work = WorkDir(work_dir, "gold")
    saved: dict[str, DataFrame] = {}

    def checkpoint(df: DataFrame, name: str) -> DataFrame:
        saved[name] = work.materialize(df, name)
        return saved[name]

    try:
        built = build_gold(candidates, cfg, silver_version, input_rows, weights, checkpoint=checkpoint)
        comment = f"Dolly-formatted, tokenized ({cfg.tokenizer}) train/eval records with a packing plan"
        versions = {"gold": tables.write_table(spark, gold_rows(built), names.gold, comment=comment)}
        # The rejects come from the same tokenized rows as gold: no second tokenize, no anti-join.
        rejected = gold_quarantine_rows(saved["tokenized"]).toArrow()  # a handful of rows
    finally:
        shutil.rmtree(work.path, ignore_errors=True)
    gold = tables.read_table(spark, names.gold)
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
        "input_rows": input_rows,
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
