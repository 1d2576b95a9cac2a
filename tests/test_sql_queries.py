"""The README's and docs/gold.md's queries, run through ``dolly-spark sql`` on the real dolly-15k output.

The tables are prepared and the views created (as ``dolly-spark report`` does) in this process;
the queries then run in a fresh ``dolly-spark sql`` process, whose engine has never seen them,
so the views must come back from the stored definitions. Each result is checked against the
same number computed here with the DataFrame API.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from dolly_spark.ops import tables
from dolly_spark.prep import views
from dolly_spark.prep.prepare import PrepareConfig, run
from tests.shared_data import DOLLY_JSONL

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not DOLLY_JSONL.exists(), reason="real dolly-15k not available")


def sql_blocks(path: Path) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", path.read_text(), re.S)


@pytest.fixture(scope="module")
def real_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("sql_real")
    result = run(PrepareConfig(input=str(DOLLY_JSONL), output_root=str(root)), spark)
    names = tables.TableNames(root=str(root))
    assert views.create_views(spark, names) == list(views.VIEWS)
    for v in views.VIEWS:  # forget them here too: only the stored definitions can bring them back
        spark.sql(f"DROP VIEW IF EXISTS {v}")
    return names, result


def dolly_sql(root: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), RUST_LOG="error")
    env.pop("SPARK_REMOTE", None)
    cmd = [sys.executable, "-m", "dolly_spark.commands.cli", "sql", "--output-root", root, *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def results(real_root, tmp_path_factory):
    """{"readme": [rows per statement], "docs": [...]} from one fresh `dolly-spark sql -f` run each."""
    names, _ = real_root
    out = {}
    for key, path in (("readme", REPO / "README.md"), ("docs", REPO / "docs" / "gold.md")):
        script = tmp_path_factory.mktemp("sql") / f"{key}.sql"
        script.write_text(";\n".join(sql_blocks(path)))
        done = dolly_sql(names.root, "-f", str(script), "--format", "json", "--max-rows", "0")
        assert done.returncode == 0, done.stderr[-3000:]
        out[key] = [json.loads(line) for line in done.stdout.splitlines()]
    return out


def test_the_documented_queries_are_the_expected_ones():
    readme = sql_blocks(REPO / "README.md")
    assert len(readme) == 1 and readme[0].count(";") == 5  # one block, five queries
    assert len(sql_blocks(REPO / "docs" / "gold.md")) == 5


def test_done_when_a_fresh_process_prints_the_length_histogram(real_root):
    names, _ = real_root
    done = dolly_sql(names.root, "SELECT * FROM v_length_histogram LIMIT 5")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["split", "category", "bucket_start", "bucket_end", "records"]
    assert len(lines) == 2 + 5 + 1 and lines[-1] == "(5 rows)"


def gold_df(spark, names):
    return tables.read_table(spark, names.gold)


def check_split_counts(spark, names, rows):
    split_is = lambda name: F.sum((F.col("split") == name).cast("int")).alias(name)  # noqa: E731
    by_cat = gold_df(spark, names).groupBy("category").agg(split_is("train"), split_is("eval")).collect()
    expected = {r["category"]: (r["train"], r["eval"]) for r in by_cat}
    assert {r["category"]: (r["train"], r["eval"]) for r in rows} == expected and len(rows) == 8
    assert [r["train"] for r in rows] == sorted((r["train"] for r in rows), reverse=True)


def check_quarantine_reasons(spark, names, rows):
    q = tables.read_table(spark, names.quarantine)
    expected = {
        (r["stage"], r["reason"]): (r["n"], r["example"])
        for r in q.groupBy("stage", "reason")
        .agg(F.count("*").alias("n"), F.min("record_id").alias("example"))
        .collect()
    }
    assert {(r["stage"], r["reason"]): (r["records"], r["example"]) for r in rows} == expected
    assert sum(r["records"] for r in rows) == q.count() > 0


def check_share_over_1024(spark, names, rows):
    # Straight from gold's seq_len: the view's 128-token buckets start at 1024 exactly when seq_len >= 1024.
    by_cat = gold_df(spark, names).groupBy("category").agg(F.avg((F.col("seq_len") >= 1024).cast("int")).alias("s"))
    expected = {r["category"]: r["s"] for r in by_cat.collect()}
    assert {r["category"] for r in rows} == set(expected)
    for r in rows:
        assert r["share_over_1024"] == pytest.approx(expected[r["category"]], abs=1e-12)
    assert [r["share_over_1024"] for r in rows] == sorted((r["share_over_1024"] for r in rows), reverse=True)
    assert max(expected.values()) > 0  # the real data does have long records


def check_duplicate_pairs(spark, names, rows):
    instruction = {
        r["record_id"]: r["instruction"]
        for r in tables.read_table(spark, names.silver).select("record_id", "instruction").collect()
    }
    dups = tables.read_table(spark, names.duplicates).collect()
    pairs = {(d["method"], d["jaccard"], instruction[d["record_id"]], instruction[d["kept_record_id"]]) for d in dups}
    assert len(rows) == min(10, len(dups)) > 0
    assert all((r["method"], r["jaccard"], r["removed"], r["kept"]) in pairs for r in rows)
    assert [r["jaccard"] for r in rows] == sorted(d["jaccard"] for d in dups)[: len(rows)]


def check_latest_metrics(result):
    def check(spark, names, rows):
        expected = {(c.stage, c.input_rows, c.output_rows, c.quarantined_rows, c.removed_rows) for c in result.counts}
        got = {(r["stage"], r["input_rows"], r["output_rows"], r["quarantined_rows"], r["removed_rows"]) for r in rows}
        assert got == expected and len(rows) == 4

    return check


def check_packing_fill(spark, names, rows):
    g = gold_df(spark, names)
    expected = {
        r["split"]: (r["packs"], r["tokens"])
        for r in g.groupBy("split")
        .agg(F.countDistinct("pack_id").alias("packs"), F.sum("seq_len").alias("tokens"))
        .collect()
    }
    assert {r["split"]: (r["packs"], r["tokens"]) for r in rows} == expected
    for r in rows:
        assert r["fill"] == pytest.approx(r["tokens"] / (r["packs"] * 2048)) and 0 < r["fill"] <= 1


def check_duplicates_and_loss_share(spark, names, rows):
    silver = {
        r["category"]: r["count"] for r in tables.read_table(spark, names.silver).groupBy("category").count().collect()
    }
    dups = tables.read_table(spark, names.duplicates).groupBy("category", "method").count().collect()
    expected = {(r["category"], r["method"]): (r["count"], r["count"] / silver[r["category"]]) for r in dups}
    expected.update({(c, "none"): (0, 0.0) for c in silver if not any(k[0] == c for k in expected)})
    got = {(r["category"], r["method"]): (r["duplicates"], r["duplicate_share"]) for r in rows}
    assert got.keys() == expected.keys()
    for k, (n, share) in expected.items():
        assert got[k][0] == n and got[k][1] == pytest.approx(share)
    g = (
        gold_df(spark, names)
        .groupBy("category")
        .agg((F.avg(F.col("seq_len") - F.col("prompt_len")) / F.avg("seq_len")).alias("s"))
    )
    loss = {r["category"]: r["s"] for r in g.collect()}
    for r in rows:
        assert r["loss_token_share"] == pytest.approx(loss[r["category"]])
    assert [r["duplicate_share"] for r in rows] == sorted((r["duplicate_share"] for r in rows), reverse=True)


def test_readme_queries_give_the_tables_numbers(spark, real_root, results):
    names, result = real_root
    checks = [check_split_counts, check_quarantine_reasons, check_share_over_1024, check_duplicate_pairs]
    checks.append(check_latest_metrics(result))
    assert len(results["readme"]) == len(checks)
    for check, rows in zip(checks, results["readme"]):
        check(spark, names, rows)


def test_docs_queries_give_the_tables_numbers(spark, real_root, results):
    names, _ = real_root
    checks = [check_split_counts, check_quarantine_reasons, check_share_over_1024, check_packing_fill]
    checks.append(check_duplicates_and_loss_share)
    assert len(results["docs"]) == len(checks)
    for check, rows in zip(checks, results["docs"]):
        check(spark, names, rows)
