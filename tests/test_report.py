import re
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from dolly_spark.commands import report as report_cmd
from dolly_spark.ops import tables
from dolly_spark.prep import report, views
from tests.test_gold import real_gold  # noqa: F401  (session fixture shared with test_gold)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "gold.md"
DUPLICATES_SCHEMA = (
    "record_id string, kept_record_id string, cluster_id string, method string, jaccard double, category string"
)
GOLD_MINI_SCHEMA = "record_id string, category string, split string, context string, seq_len int, prompt_len int"


@pytest.fixture()
def tiny_tables(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path))
    g = [
        ("a", "open_qa", "train", "", 100, 40),
        ("b", "open_qa", "eval", "ctx", 300, 250),
        ("c", "closed_qa", "train", "ctx", 130, 100),
    ]
    tables.write_table(spark, spark.createDataFrame(g, GOLD_MINI_SCHEMA), names.gold)
    silver = [
        ("a", "open_qa"),
        ("b", "open_qa"),
        ("c", "closed_qa"),
        ("d", "closed_qa"),
        ("e", "closed_qa"),
        ("f", "closed_qa"),
    ]
    tables.write_table(spark, spark.createDataFrame(silver, "record_id string, category string"), names.silver)
    return names


def test_views_on_literal_tables(spark, tiny_tables):
    names = tiny_tables
    assert views.create_views(spark, names) == ["v_category_stats", "v_length_histogram"]  # no duplicates table yet
    hist = spark.sql("SELECT split, category, bucket_start, bucket_end, records FROM v_length_histogram")
    expected = [("train", "open_qa", 0, 128, 1), ("eval", "open_qa", 256, 384, 1), ("train", "closed_qa", 128, 256, 1)]
    assertDataFrameEqual(
        hist,
        spark.createDataFrame(
            expected, "split string, category string, bucket_start int, bucket_end int, records long"
        ),
    )
    stats = spark.sql(
        "SELECT category, records, train_records, eval_records, max_seq_len, tokens FROM v_category_stats"
    )
    assertDataFrameEqual(
        stats,
        spark.createDataFrame(
            [("open_qa", 2, 1, 1, 300, 400), ("closed_qa", 1, 1, 0, 130, 130)],
            "category string, records long, train_records long, eval_records long, max_seq_len int, tokens long",
        ),
    )

    dups = [
        ("d", "c", "k7", "exact", 1.0, "closed_qa"),
        ("e", "c", "k7", "minhash", 0.8, "closed_qa"),
        ("f", "c", "k8", "minhash", 0.9, "closed_qa"),
    ]
    tables.write_table(spark, spark.createDataFrame(dups, DUPLICATES_SCHEMA), names.duplicates)
    assert "v_duplicates_by_category" in views.create_views(spark, names)
    out = spark.sql(
        "SELECT category, method, duplicates, clusters, silver_records, duplicate_share FROM v_duplicates_by_category"
    )
    expected = [
        ("open_qa", "none", 0, 0, 2, 0.0),
        ("closed_qa", "exact", 1, 1, 4, 0.25),
        ("closed_qa", "minhash", 2, 2, 4, 0.5),
    ]
    assertDataFrameEqual(
        out,
        spark.createDataFrame(
            expected,
            "category string, method string, duplicates long, clusters long, silver_records long, duplicate_share double",
        ),
    )


def test_view_names_in_unity_catalog():
    names = tables.TableNames(catalog="main", schema="dolly", prefix="dev_")
    assert views.view_name(names, "v_category_stats") == "`main`.`dolly`.`dev_v_category_stats`"
    assert "`main`.`dolly`.`dev_gold`" in views.view_select(names, "v_length_histogram")


def test_report_config_defaults(tmp_path):
    cfg = report.ReportConfig(output_root=str(tmp_path))
    assert cfg.report_dir() == tmp_path / "reports"
    with pytest.raises(ValueError):
        report.ReportConfig(catalog="c", schema="s").report_dir()


def test_report_on_real_data(spark, real_gold, capsys):  # noqa: F811
    names, result = real_gold
    # An empty duplicates table (the dedup stage writes the real one) so every view exists.
    tables.write_table(spark, spark.createDataFrame([], DUPLICATES_SCHEMA), names.duplicates)
    assert report_cmd.main(["--output-root", names.root]) == 0
    out_dir = Path(names.root) / "reports"
    printed = capsys.readouterr().out
    for name in ("category_counts.png", "token_lengths.png", "summary.md"):
        assert str(out_dir / name) in printed
    for png in ("category_counts.png", "token_lengths.png"):
        data = (out_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    summary = (out_dir / "summary.md").read_text()
    assert f"| gold | {result['gold_rows']} |" in summary
    assert f"| silver | {result['input_rows']} |" in summary
    for reason, n in result["quarantined_by_reason"].items():
        assert f"| gold | {reason} | {n} |" in summary
    assert "v_duplicates_by_category" in summary

    gold_n = tables.read_table(spark, names.gold).count()
    assert spark.sql("SELECT SUM(records) FROM v_category_stats").first()[0] == gold_n
    assert spark.sql("SELECT SUM(records) FROM v_length_histogram").first()[0] == gold_n
    dup = spark.sql("SELECT SUM(duplicates), SUM(silver_records) FROM v_duplicates_by_category").first()
    assert (dup[0], dup[1]) == (0, result["input_rows"])


def test_documented_queries_run_on_real_tables(spark, real_gold):  # noqa: F811
    names, _ = real_gold
    if not tables.table_exists(spark, names.duplicates):
        tables.write_table(spark, spark.createDataFrame([], DUPLICATES_SCHEMA), names.duplicates)
    tables.register_all(spark, names)
    views.create_views(spark, names)
    queries = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    assert len(queries) >= 5
    for q in queries:
        rows = spark.sql(q.strip().rstrip(";")).collect()
        assert rows, q
