"""Own instruction data: sources in every format and preset, mapping errors, and prepare on a mix."""

import gzip
import json

import deltalake
import pandas as pd
import pyarrow as pa
import pytest

from dolly_spark.ops.config import ConfigError, parse_config
from dolly_spark.prep.prepare import PrepareConfig
from dolly_spark.prep.sources import SourceConfig, SourceError, name_from_uri, read_source, read_sources

ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]
TICKETS = [
    {"question": "How do I reset my password?", "ticket_text": "User locked out", "answer": "Use the reset link."},
    {"question": "Where is my invoice?", "ticket_text": "", "answer": "Under Billing."},
    {"question": "How do I reset my password?", "ticket_text": "User locked out", "answer": "Use the reset link."},
]


def _jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def _rows(df):
    return sorted((r.asDict() for r in df.collect()), key=lambda r: (r["instruction"] or "", r["record_id"]))


def test_alpaca_preset_in_every_file_format(spark, tmp_path):
    paths = {
        "jsonl": _jsonl(tmp_path / "a.jsonl", ALPACA),
        "jsonl.gz": _jsonl(tmp_path / "a.jsonl.gz", ALPACA, gz=True),
        "json": str(tmp_path / "a.json"),
        "parquet": str(tmp_path / "a.parquet"),
        "csv": str(tmp_path / "a.csv"),
    }
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))  # one JSON array, as alpaca_data.json ships
    pd.DataFrame(ALPACA).to_parquet(paths["parquet"])
    pd.DataFrame(ALPACA).to_csv(paths["csv"], index=False)
    # Without "input" in the data the alpaca preset still fits (context is optional).
    no_input = read_source(
        spark, SourceConfig(uri=_jsonl(tmp_path / "n.jsonl", [{"instruction": "i", "output": "o"}]), preset="alpaca")
    )
    assert [(r["context"], r["category"]) for r in no_input.collect()] == [(None, "n")]
    for kind, path in paths.items():
        rows = _rows(read_source(spark, SourceConfig(uri=path, preset="alpaca", category="alpaca", name=kind)))
        assert [r["instruction"] for r in rows] == ["Add the numbers.", "Name a primary colour."], kind
        assert rows[0]["context"] == "2 and 3" and rows[0]["response"] == "5", kind
        assert {r["category"] for r in rows} == {"alpaca"} and {r["source"] for r in rows} == {kind}, kind
        assert all(r["ingest_error"] is None and r["field_errors"] == [] for r in rows), kind
        assert len({r["record_id"] for r in rows}) == 2, kind


def test_delta_source_with_columns_records_its_version(spark, tmp_path):
    path = str(tmp_path / "tickets")
    deltalake.write_deltalake(path, pa.Table.from_pylist(TICKETS[:1]))
    deltalake.write_deltalake(path, pa.Table.from_pylist(TICKETS[1:]), mode="append")
    src = SourceConfig(
        uri=path,
        format="delta",
        columns={"instruction": "question", "context": "ticket_text", "response": "answer"},
        category="support",
    )
    rows = _rows(read_source(spark, src))
    assert len(rows) == 3 and {r["source_version"] for r in rows} == {1}
    assert {r["source"] for r in rows} == {"tickets"} and {r["category"] for r in rows} == {"support"}
    # Two identical rows are still two records with distinct ids.
    assert len({r["record_id"] for r in rows}) == 3
    assert rows[1]["response"] == "Use the reset link." and rows[1]["context"] == "User locked out"
    # Inferred as Delta without format.
    assert read_source(spark, SourceConfig(uri=path, columns=src.columns)).count() == 3
    # A catalog table by name (a Unity Catalog catalog.schema.table on Databricks).
    spark.sql(f"CREATE TABLE IF NOT EXISTS tickets_by_name USING delta LOCATION '{path}'")
    by_name = read_source(spark, SourceConfig(uri="tickets_by_name", format="table", columns=src.columns))
    assert by_name.count() == 3 and {r["source"] for r in by_name.collect()} == {"tickets_by_name"}


@pytest.mark.parametrize("keys", [("role", "content", "user", "assistant"), ("from", "value", "human", "gpt")])
def test_conversation_preset_takes_the_first_user_and_assistant_turn(spark, tmp_path, keys):
    role, text, user, bot = keys
    column = "messages" if role == "role" else "conversations"
    rows = [
        {
            column: [
                {role: "system", text: "be nice"},
                {role: user, text: "Hi?"},
                {role: bot, text: "Hello."},
                {role: user, text: "Second?"},
                {role: bot, text: "Later."},
            ]
        },
        {column: [{role: user, text: "Unanswered"}]},
    ]
    df = read_source(spark, SourceConfig(uri=_jsonl(tmp_path / "c.jsonl", rows), preset="conversation"))
    got = _rows(df)
    assert [(r["instruction"], r["response"]) for r in got] == [("Hi?", "Hello."), ("Unanswered", None)]
    assert {r["category"] for r in got} == {"c"}  # no category: the source's name


def test_dolly_preset_keeps_line_ingest(spark, tmp_path):
    rows = [{"instruction": "i", "context": "", "response": "r", "category": "open_qa"}]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n{broken\n")
    got = read_sources(spark, [SourceConfig(uri=str(path))]).orderBy("line_number").collect()
    assert [r["ingest_error"] for r in got] == [None, "malformed_json"]
    assert {r["source"] for r in got} == {"d"}


def test_errors_name_the_source_and_column(spark, tmp_path):
    tickets = _jsonl(tmp_path / "t.jsonl", TICKETS)
    with pytest.raises(SourceError, match=r"source t: column 'body' \(mapped to response\) does not exist"):
        read_source(spark, SourceConfig(uri=tickets, columns={"instruction": "question", "response": "body"}))
    with pytest.raises(SourceError, match="source t: preset dolly does not fit: column 'instruction'"):
        read_sources(spark, [SourceConfig(uri=tickets)])
    with pytest.raises(SourceError, match="source t: preset conversation needs a column"):
        read_source(spark, SourceConfig(uri=tickets, preset="conversation"))
    bad_conv = _jsonl(tmp_path / "bc.jsonl", [{"messages": ["just", "strings"]}])
    with pytest.raises(SourceError, match="source bc: preset conversation does not fit column 'messages'"):
        read_source(spark, SourceConfig(uri=bad_conv, preset="conversation"))
    with pytest.raises(SourceError, match="source gone: .* matches no files"):
        read_source(spark, SourceConfig(uri=str(tmp_path / "gone" / "*.parquet"), name="gone", preset="alpaca"))
    with pytest.raises(SourceError, match="source nodelta: .* is not a Delta table"):
        read_source(spark, SourceConfig(uri=str(tmp_path), format="delta", name="nodelta", preset="alpaca"))
    nested = _jsonl(tmp_path / "n.jsonl", [{"q": {"a": 1}, "r": "x"}])
    with pytest.raises(SourceError, match=r"source n: column 'q' \(mapped to instruction\) is struct"):
        read_source(spark, SourceConfig(uri=nested, columns={"instruction": "q", "response": "r"}))
    with pytest.raises(SourceError, match="same name 't'"):
        read_sources(spark, [SourceConfig(uri=tickets, preset="alpaca"), SourceConfig(uri=tickets, preset="alpaca")])
    with pytest.raises(ValueError, match="weight must be"):
        SourceConfig(uri=tickets, weight=0)


def test_names_from_uris():
    assert name_from_uri("../shared/data/databricks-dolly-15k.jsonl") == "databricks-dolly-15k"
    assert name_from_uri("databricks/databricks-dolly-15k") == "databricks-dolly-15k"
    assert name_from_uri("main.support.tickets") == "tickets"
    assert name_from_uri("/data/chats/*.jsonl.gz") == "chats"  # a glob: its folder
    assert name_from_uri("/Volumes/main/support/raw/tickets/") == "tickets"


def test_sources_from_yaml_and_flags(tmp_path):
    cfg_file = tmp_path / "sources.yaml"
    cfg_file.write_text(
        "sources:\n"
        "  - uri: /data/databricks-dolly-15k.jsonl\n"
        "  - uri: main.support.tickets\n"
        "    columns: {instruction: question, context: ticket_text, response: answer}\n"
        "    category: support\n"
        "    weight: 3\n"
        "categories: any\n"
    )
    cfg = parse_config(
        PrepareConfig, ["--config", str(cfg_file), "--source", "alp=/x/a.json", "--output-root", "/tmp/o"], "prepare"
    )
    srcs = cfg.source_list()
    assert [s.source_name for s in srcs] == ["databricks-dolly-15k", "tickets", "alp"]
    assert srcs[1].columns["context"] == "ticket_text" and srcs[1].weight == 3
    assert cfg.clean_config().categories == ("any",)
    # Defaults: dolly's eight when every source is dolly-15k-shaped (dolly preset), any otherwise.
    assert len(PrepareConfig(input="/x.jsonl", source=("b=/y.jsonl",)).clean_config().categories) == 8
    alpaca = SourceConfig(uri="/x.json", preset="alpaca")
    assert PrepareConfig(input="/x.jsonl", sources=(alpaca,)).clean_config().categories == ("any",)
    cfg_file.write_text("sources:\n  - uri: /x\n    colums: {a: b}\n")
    with pytest.raises(SystemExit):
        parse_config(PrepareConfig, ["--config", str(cfg_file)], "prepare")
    cfg_file.write_text("sources:\n  - uri: /x\n    weight: two\n")
    with pytest.raises(ConfigError, match=r"sources\[0\]\.weight: expected an integer"):
        from dolly_spark.ops.config import _build, load_yaml

        _build(PrepareConfig, load_yaml(cfg_file), "")


def test_prepare_mixes_dolly_with_a_delta_table(spark, tmp_path):
    """dolly-15k lines + a Delta table in another schema: gold from both, per-source accounting,
    cross-source duplicates, gold_stats by source, weights on the own source."""
    from tests.shared_data import DOLLY_JSONL

    lines = DOLLY_JSONL.read_text().splitlines()[:200]
    dolly = tmp_path / "databricks-dolly-15k.jsonl"
    dolly.write_text("\n".join(lines) + "\n")
    copied = json.loads(lines[5])
    tickets = TICKETS + [
        {"question": copied["instruction"], "ticket_text": copied["context"], "answer": copied["response"]},
        {"question": "", "ticket_text": "", "answer": "no question"},
    ]
    delta = str(tmp_path / "tickets")
    deltalake.write_deltalake(delta, pa.Table.from_pylist(tickets))
    cfg = PrepareConfig(
        output_root=str(tmp_path / "out"),
        sources=(
            SourceConfig(uri=str(dolly)),
            SourceConfig(
                uri=delta,
                columns={"instruction": "question", "context": "ticket_text", "response": "answer"},
                category="support",
                weight=2,
            ),
        ),
    )
    from dolly_spark.prep.prepare import run

    result = run(cfg, spark)
    by_source = result.details["by_source"]
    assert set(by_source) == {"databricks-dolly-15k", "tickets"}
    assert by_source["tickets"]["raw"] == 5 and by_source["databricks-dolly-15k"]["raw"] == 200
    for t in by_source.values():
        assert t["raw"] == t["gold"] + t["quarantine"] + t["duplicates"]
    # tickets: one exact copy within the table, one copy of a dolly record (the dolly one is kept:
    # the earlier source wins), one empty question.
    assert by_source["tickets"] == {"raw": 5, "gold": 2, "quarantine": 1, "duplicates": 2}
    assert by_source["databricks-dolly-15k"]["duplicates"] == 0

    out = tmp_path / "out" / "tables"
    gold = deltalake.DeltaTable(str(out / "gold")).to_pandas()
    support = gold[gold["source"] == "tickets"]
    assert set(support["category"]) == {"support"} and set(support["weight"]) == {2}
    assert set(gold[gold["source"] == "databricks-dolly-15k"]["weight"]) == {1}
    assert len(set(gold["category"])) > 2  # dolly's categories and support, none quarantined as unknown
    dups = deltalake.DeltaTable(str(out / "duplicates")).to_pandas()
    cross = dups[dups["source"] != dups["kept_source"]]
    assert cross[["source", "kept_source"]].values.tolist() == [["tickets", "databricks-dolly-15k"]]
    bronze = deltalake.DeltaTable(str(out / "bronze")).to_pandas()
    assert set(bronze[bronze["source"] == "tickets"]["source_version"]) == {0}
    assert result.details["source_versions"] == {"tickets": 0}
    stats = deltalake.DeltaTable(str(out / "gold_stats")).to_pandas()
    per_source = stats[(stats["category"] == "*") & (stats["source"] != "*")]
    assert per_source.groupby("source")["records"].sum().to_dict() == {s: t["gold"] for s, t in by_source.items()}
    q = deltalake.DeltaTable(str(out / "quarantine")).to_pandas()
    assert q[q["source"] == "tickets"]["reason"].tolist() == ["empty_instruction"]
    # The metrics table carries the per-source accounting in the last stage's details.
    metrics = deltalake.DeltaTable(str(out / "metrics")).to_pandas()
    gold_details = json.loads(
        metrics[(metrics["run_id"] == result.run_id) & (metrics["stage"] == "gold")]["details"].iloc[0]
    )
    assert gold_details["by_source"] == by_source
    # The quality report: records per source per table.
    from dolly_spark.prep.report import source_counts, summary_markdown

    counts = source_counts(spark, cfg.table_names())
    assert counts["tickets"] == {"bronze": 5, "quarantine": 1, "duplicates": 2, "gold": 2}
    assert "## Records per source" in summary_markdown(spark, cfg.table_names(), {"gold": {}}, [])


def test_weighted_sources_repeat_in_the_train_staging_only(spark):
    from dolly_spark.launch.staging import repeat_weighted

    DDL = "record_id string, split string, pack_id long, weight int"
    table = pa.table(
        {
            "record_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "eval", "train"],
            "pack_id": pa.array([0, 0, 0, 1], pa.int64()),
            "weight": pa.array([3, 1, 3, None], pa.int32()),
        }
    )
    out = [r.asDict() for r in repeat_weighted(spark.createDataFrame(table.to_pylist(), DDL)).collect()]
    ids = sorted(r["record_id"] for r in out)
    assert ids == ["a", "a", "a", "b", "c", "d"]  # eval and weight-1 rows once
    # Copies go to new packs (pack_id + j * 2), never into a pack that is already full.
    assert sorted(r["pack_id"] for r in out if r["record_id"] == "a") == [0, 2, 4]
    assert repeat_weighted(spark.createDataFrame(table.to_pylist(), DDL).drop("weight")).count() == 4


def test_hub_and_table_sources_fail_with_one_line(spark):
    # Offline in tests: a hub id other than dolly-15k cannot be downloaded.
    with pytest.raises(SourceError, match="source somedata: could not download hub dataset someorg/somedata"):
        read_source(spark, SourceConfig(uri="someorg/somedata", preset="alpaca"))
    with pytest.raises(SourceError, match=r"source tickets: cannot read main\.support\.tickets as table"):
        read_source(spark, SourceConfig(uri="main.support.tickets", preset="alpaca"))


def test_categories_any_accepts_own_categories(spark):
    from dolly_spark.prep.clean import CleanConfig, validate

    df = spark.createDataFrame(
        [("a", "i", "", "r", "Support", None, [], [])],
        "record_id string, instruction string, context string, response string, category string, "
        "ingest_error string, field_errors array<string>, extra_keys array<string>",
    )
    assert validate(df).first()["reason"] == "unknown_category"
    assert validate(df, CleanConfig(categories=("any",))).first()["reason"] is None
