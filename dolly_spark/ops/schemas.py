"""The table schemas, in one place: what each Delta table holds, column by column (DDL strings)."""

from __future__ import annotations

BRONZE_SCHEMA = (
    "record_id string, source_file string, line_number long, raw_line string, "
    "instruction string, context string, response string, category string, "
    "ingest_error string, field_errors array<string>, extra_keys array<string>"
)
BRONZE_COLUMNS = tuple(c.split()[0] for c in BRONZE_SCHEMA.split(", "))
# ``source``: the name of the input source a record came from (prep/sources.py), bronze to gold.
SILVER_COLUMNS = (
    "record_id",
    "instruction",
    "context",
    "response",
    "category",
    "source_file",
    "line_number",
    "source",
)
QUARANTINE_COLUMNS = (
    "record_id",
    "stage",
    "reason",
    "reasons",
    "source_file",
    "line_number",
    "raw_line",
    "category",
    "source",
)
QUARANTINE_SCHEMA = (
    "record_id string, stage string, reason string, reasons array<string>, source_file string, "
    "line_number long, raw_line string, category string, source string"
)
# source / kept_source: the source of the removed record and of the record kept in its place.
DUPLICATES_COLUMNS = (
    "record_id",
    "kept_record_id",
    "cluster_id",
    "method",
    "jaccard",
    "category",
    "source",
    "kept_source",
)
DUPLICATES_SCHEMA = (
    "record_id string, kept_record_id string, cluster_id string, method string, jaccard double, category string, "
    "source string, kept_source string"
)
GOLD_TYPES = (
    ("record_id", "string"),
    ("category", "string"),
    ("split", "string"),
    ("instruction", "string"),
    ("context", "string"),
    ("response", "string"),
    ("prompt", "string"),
    ("text", "string"),
    ("input_ids", "array<int>"),
    ("prompt_len", "int"),
    ("seq_len", "int"),
    ("pack_id", "long"),
    ("silver_version", "long"),
    ("source", "string"),
    ("weight", "int"),  # the source's weight: copies of a train record in the training data
)
GOLD_COLUMNS = tuple(c for c, _ in GOLD_TYPES)
GOLD_SCHEMA = ", ".join(f"{c} {t}" for c, t in GOLD_TYPES)
METRICS_SCHEMA = (
    "run_id string, stage string, input_rows long, output_rows long, quarantined_rows long, "
    "removed_rows long, details string, created_at timestamp"
)
# predictions / eval_generations: the generation result columns the scoring UDF returns.
RESULT_DDL = "response string, prompt_tokens bigint, completion_tokens bigint, finish_reason string, error string"
RESULT_COLUMNS = ("response", "prompt_tokens", "completion_tokens", "finish_reason", "error")
