"""Bronze -> silver: named cleaning and validation rules, each ``DataFrame -> DataFrame``.

Rules never drop rows. Each rule adds one ``_rule_<name>`` column holding its reason or null;
``collect_reasons`` folds them into the ``reasons`` array once (a chain of nested
``when(...).otherwise(reasons)`` grows the plan exponentially on some engines), and rows with any
reason go to quarantine with ``reason`` = the first.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dolly_spark.ops.schemas import SILVER_COLUMNS
from dolly_spark.text.prompts import TEMPLATE_KEYS

KNOWN_CATEGORIES = (
    "open_qa",
    "general_qa",
    "classification",
    "closed_qa",
    "brainstorming",
    "information_extraction",
    "summarization",
    "creative_writing",
)
TEXT_FIELDS = ("instruction", "context", "response")
ANY_CATEGORY = "any"  # categories: any -> no category is unknown


@dataclass(frozen=True)
class CleanConfig:
    categories: tuple[str, ...] = KNOWN_CATEGORIES
    max_instruction_chars: int = 16_000
    max_context_chars: int = 64_000
    max_response_chars: int = 32_000
    strip_citations: bool = True
    # Dolly trains on the text as published; normalisation rewrites ~3.3k of dolly-15k's records.
    raw_text: bool = field(default=False, metadata={"help": "keep the text byte for byte (no normalisation)"})

    def __post_init__(self):
        # A limit below 1 would quarantine every record: a typo, not a policy.
        for name in ("max_instruction_chars", "max_context_chars", "max_response_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.categories:
            raise ValueError("categories must name at least one category")


# Wikipedia citation markers: [1], [12], [a], [citation needed], [note 3], [clarification needed].
_CITATION = re.compile(r"\[(?:\d{1,3}|[a-z]|citation needed|clarification needed|note \d+|verification needed)\]")
# Whitespace other than newlines, where it is not already one space: a run, or a tab, NBSP...
_SPACES_TO_ONE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
# The ASCII characters besides " " and "\n" that str.isspace() counts (and _SPACES_TO_ONE replaces).
_ASCII_OTHER_SPACE = tuple(c for c in map(chr, range(128)) if c.isspace() and c not in " \n")
_SPACE_BEFORE_PUNCT = re.compile(r" +([.,;:!?])")
_SPACED_PUNCT = tuple(" " + p for p in ".,;:!?")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# C0 controls other than \t \n \r (whitespace we normalise), DEL, and the C1 block U+0080-U+009F
# (NEL too: JSON text never needs it, and it survives as a line break in some renderers).
CONTROL_CHARS_RE = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"


RULE_PREFIX = "_rule_"


def _flag(df: DataFrame, rule: str, cond: Column, reason: Column | str | None = None) -> DataFrame:
    value = F.lit(reason or rule) if not isinstance(reason, Column) else reason
    return df.withColumn(RULE_PREFIX + rule, F.when(cond, value).otherwise(F.lit(None).cast("string")))


def collect_reasons(df: DataFrame) -> DataFrame:
    """Fold the rule columns, in the order they were added, into ``reasons`` and ``reason``."""
    rule_cols = [c for c in df.columns if c.startswith(RULE_PREFIX)]
    reasons = F.array_compact(F.array(*[F.col(c) for c in rule_cols])) if rule_cols else F.array()
    return (
        df.withColumn("reasons", reasons.cast("array<string>"))
        .drop(*rule_cols)
        .withColumn("reason", F.when(F.size("reasons") > 0, F.col("reasons")[0]))
    )


def flag_ingest_errors(df: DataFrame) -> DataFrame:
    """Line-level problems found at ingest: malformed_json, invalid_utf8, not_an_object, ..."""
    return _flag(df, "ingest_error", F.col("ingest_error").isNotNull(), F.col("ingest_error"))


def flag_wrong_types(df: DataFrame) -> DataFrame:
    """A JSON number, object, array or boolean where a string belongs."""
    return _flag(df, "wrong_type", F.size("field_errors") > 0)


def flag_missing_fields(df: DataFrame) -> DataFrame:
    """instruction, response and category are required keys (context may be null or absent)."""
    missing = F.col("instruction").isNull() | F.col("response").isNull() | F.col("category").isNull()
    ok = F.col("ingest_error").isNull() & (F.size("field_errors") == 0)
    return _flag(df, "missing_field", ok & missing)


def flag_control_characters(df: DataFrame) -> DataFrame:
    """NUL and other control characters: never valid in instruction text."""
    bad = F.lit(False)
    for c in TEXT_FIELDS + ("category",):
        bad = bad | F.coalesce(F.col(c).rlike(CONTROL_CHARS_RE), F.lit(False))
    return _flag(df, "control_characters", bad)


def normalize_text_value(s: str | None, strip_citations: bool = True) -> str | None:
    if s is None:
        return None
    # Each substitution only where its text occurs: this runs on every field of every record.
    if not unicodedata.is_normalized("NFC", s):
        s = unicodedata.normalize("NFC", s)
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    if strip_citations:
        if "[" in s:
            s = _CITATION.sub("", s)
        if any(p in s for p in _SPACED_PUNCT):
            s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    if not s.isascii() or "  " in s or any(c in s for c in _ASCII_OTHER_SPACE):
        s = _SPACES_TO_ONE.sub(" ", s)
    # Only " " and "\n" are left as whitespace: a line has an end to strip only next to a newline.
    if " \n" in s or "\n " in s:
        s = "\n".join(line.strip() for line in s.split("\n"))
    if "\n\n\n" in s:
        s = _MANY_NEWLINES.sub("\n\n", s)
    s = s.strip()
    # Only zero-width / format characters (U+200B-U+200F, U+2060, U+FEFF, any Cf) left: nothing a
    # reader sees, so the field is empty. Inside visible text (emoji ZWJ, soft hyphens) they stay.
    return "" if all(_invisible(ch) for ch in s) else s


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def map_string_columns(df: DataFrame, fns: dict[str, Callable[[str], str | None]]) -> DataFrame:
    """Each column in ``fns`` replaced by its function of each non-null value, in one Arrow pass.

    A plan node, not a UDF column: the engine may evaluate a UDF column once per expression that
    reads it (Sail ran the normalize UDF four times per text, once per rule reading the field).
    """
    schema = df.schema

    def run(batches):
        for batch in batches:
            for name, fn in fns.items():
                i = batch.schema.get_field_index(name)
                values = [None if v is None else fn(v) for v in batch.column(i).to_pylist()]
                batch = batch.set_column(i, batch.schema.field(i), pa.array(values, batch.schema.field(i).type))
            yield batch

    return df.mapInArrow(run, schema)


def normalize_text(df: DataFrame, strip_citations: bool = True) -> DataFrame:
    """NFC, CRLF -> LF, whitespace runs -> one space, at most one blank line, citation markers removed."""
    fn = functools.partial(normalize_text_value, strip_citations=strip_citations)
    df = map_string_columns(df, {c: fn for c in TEXT_FIELDS})
    return df.withColumn("context", F.coalesce(F.col("context"), F.lit("")))


def keep_raw_text(df: DataFrame) -> DataFrame:
    """Text as published (Dolly's choice); only a missing context becomes '' as in Dolly's ``if context``."""
    return df.withColumn("context", F.coalesce(F.col("context"), F.lit("")))


def normalize_category_value(s: str | None) -> str | None:
    # str.split() knows every Unicode space (tab, NBSP, U+2000-U+200A, U+3000...); SQL trim only ' '.
    return None if s is None else " ".join(s.split()).lower()


def normalize_category(df: DataFrame) -> DataFrame:
    """' Open_QA\\t' or '\\u00a0open_qa' -> 'open_qa': case and surrounding whitespace are not meaningful."""
    return map_string_columns(df, {"category": normalize_category_value})


def flag_empty_fields(df: DataFrame) -> DataFrame:
    df = _flag(df, "empty_instruction", F.col("instruction") == "")
    return _flag(df, "empty_response", F.col("response") == "")


def flag_unknown_category(df: DataFrame, categories: tuple[str, ...] = KNOWN_CATEGORIES) -> DataFrame:
    """A category outside ``categories``; ``("any",)`` accepts every category (own data)."""
    if ANY_CATEGORY in categories:
        return _flag(df, "unknown_category", F.lit(False))
    bad = F.col("category").isNotNull() & ~F.col("category").isin(list(categories))
    return _flag(df, "unknown_category", bad)


def flag_too_many_chars(df: DataFrame, cfg: CleanConfig) -> DataFrame:
    for c, limit in (
        ("instruction", cfg.max_instruction_chars),
        ("context", cfg.max_context_chars),
        ("response", cfg.max_response_chars),
    ):
        df = _flag(df, f"{c}_too_long", F.coalesce(F.length(c) > limit, F.lit(False)))
    return df


def flag_template_keys(df: DataFrame) -> DataFrame:
    """User text containing '### End', '### Instruction:' or '### Response:' would corrupt the
    completion mask and stop generation early, so it is quarantined rather than escaped."""
    bad = F.lit(False)
    for c in TEXT_FIELDS:
        for k in TEMPLATE_KEYS:
            bad = bad | F.coalesce(F.col(c).contains(k), F.lit(False))
    return _flag(df, "template_key_in_text", bad)


def validate(df: DataFrame, cfg: CleanConfig = CleanConfig()) -> DataFrame:
    """All rules in order. Adds ``reasons`` (array) and ``reason`` (first one, or null)."""
    return (
        df.transform(flag_ingest_errors)
        .transform(flag_wrong_types)
        .transform(flag_missing_fields)
        .transform(flag_control_characters)
        .transform(lambda d: keep_raw_text(d) if cfg.raw_text else normalize_text(d, cfg.strip_citations))
        .transform(normalize_category)
        .transform(flag_empty_fields)
        .transform(lambda d: flag_unknown_category(d, cfg.categories))
        .transform(lambda d: flag_too_many_chars(d, cfg))
        .transform(flag_template_keys)
        .transform(collect_reasons)
    )


def with_source(df: DataFrame) -> DataFrame:
    """A null ``source`` where a frame predates sources (tests build bronze by hand)."""
    return df if "source" in df.columns else df.withColumn("source", F.lit(None).cast("string"))


def silver_rows(validated: DataFrame) -> DataFrame:
    return validated.transform(with_source).where(F.size("reasons") == 0).select(*SILVER_COLUMNS)


def quarantine_rows(validated: DataFrame, stage: str) -> DataFrame:
    return to_quarantine(validated.where(F.size("reasons") > 0), stage)


def to_quarantine(df: DataFrame, stage: str) -> DataFrame:
    """Shape any rejected rows for the quarantine table (raw_line kept when available)."""
    cols = set(df.columns)
    return df.select(
        "record_id",
        F.lit(stage).alias("stage"),
        "reason",
        "reasons",
        F.col("source_file") if "source_file" in cols else F.lit(None).cast("string").alias("source_file"),
        F.col("line_number") if "line_number" in cols else F.lit(None).cast("long").alias("line_number"),
        F.col("raw_line") if "raw_line" in cols else F.lit(None).cast("string").alias("raw_line"),
        F.col("category") if "category" in cols else F.lit(None).cast("string").alias("category"),
        F.col("source") if "source" in cols else F.lit(None).cast("string").alias("source"),
    )
