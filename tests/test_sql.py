"""``dolly-spark sql`` and ``dolly-spark engine`` on small literal tables, plus the SQL text rules."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dolly_spark.commands import cli
from dolly_spark.commands import sql as sql_cmd
from dolly_spark.ops import tables
from dolly_spark.ops.sqltext import SqlTextError, check_read_only, split_statements
from dolly_spark.prep import views

REPO = Path(__file__).resolve().parents[1]
GOLD_MINI_SCHEMA = "record_id string, category string, split string, context string, seq_len int, prompt_len int"
GOLD_ROWS = [
    ("a", "open_qa", "train", "", 100, 40),
    ("b", "open_qa", "eval", "ctx", 300, 250),
    ("c", "closed_qa", "train", "ctx", 130, 100),
]


def test_split_statements_ignores_semicolons_in_quotes_and_comments():
    script = "SELECT ';' AS a, `x;y` FROM t; -- not; a statement\n/* nor; this */ SELECT 'it''s;' ;;\n"
    got = split_statements(script)
    assert [s.text for s in got] == [
        "SELECT ';' AS a, `x;y` FROM t",
        "-- not; a statement\n/* nor; this */ SELECT 'it''s;'",
    ]
    assert [s.first for s in got] == ["SELECT", "SELECT"]
    with pytest.raises(SqlTextError, match="unterminated '"):
        split_statements("SELECT 'open")
    with pytest.raises(SqlTextError, match="unterminated /"):
        split_statements("SELECT 1 /* open")


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM quarantine WHERE reason = 'delete' OR stage = \"drop\"",
        "SELECT replace(instruction, 'a', 'b'), `update` FROM silver",
        "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "  -- comment first\nSHOW TABLES",
        "DESCRIBE TABLE gold",
        "EXPLAIN SELECT count(*) FROM gold",
        "VALUES (1), (2)",
    ],
)
def test_read_only_statements_pass(query):
    check_read_only(split_statements(query))


@pytest.mark.parametrize(
    "query, word",
    [
        ("DROP TABLE gold", "DROP"),
        ("SELECT 1; DELETE FROM gold WHERE split = 'eval'", "DELETE"),
        ("WITH t AS (SELECT 1 AS x) INSERT INTO gold SELECT * FROM t", "INSERT"),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "CREATE"),
        ("SET spark.sql.ansi.enabled = false", "SET"),
        ("MERGE INTO gold USING silver ON gold.record_id = silver.record_id WHEN MATCHED THEN DELETE", "DELETE"),
    ],
)
def test_writes_are_refused_naming_the_keyword(query, word):
    with pytest.raises(SqlTextError, match=rf"is not read-only \(.*{word}.*--allow-writes"):
        check_read_only(split_statements(query))


def test_render_table_aligns_numbers_right_escapes_newlines_and_truncates():
    out = sql_cmd.render(["name", "n"], [("a\nb", 5), ("long" * 10, None), ("c", 12345)], "table", 10)
    assert out.splitlines() == [
        "name       |     n",
        "-----------+------",
        "a\\nb       |     5",
        "longlongl… |  NULL",
        "c          | 12345",
        "(3 rows)",
    ]


def test_render_csv_and_json_keep_nested_values():
    class Row(dict):
        def asDict(self):
            return dict(self)

    rows = [(1, [1, 2], Row(x=1.5), None)]
    cols = ["id", "ids", "st", "missing"]
    assert sql_cmd.render(cols, rows, "csv", 0) == 'id,ids,st,missing\n1,"[1, 2]","{""x"": 1.5}",'
    assert json.loads(sql_cmd.render(cols, rows, "json", 0)) == [
        {"id": 1, "ids": [1, 2], "st": {"x": 1.5}, "missing": None}
    ]


def test_sql_and_engine_are_dolly_spark_commands():
    assert cli.parser_for("sql").parse_args(["SELECT 1", "--format", "csv"]).query == "SELECT 1"
    assert cli.parser_for("sql").parse_args(["-f", "q.sql"]).file == "q.sql"
    assert "--port" in cli.parser_for("engine").format_help()


@pytest.fixture()
def tiny_root(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path))
    tables.write_table(spark, spark.createDataFrame(GOLD_ROWS, GOLD_MINI_SCHEMA), names.gold)
    views.create_views(spark, names)  # as `dolly-spark report` does: creates and stores them
    return names


def _sql(capsys, *argv):
    rc = cli.main(["sql", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_sql_prints_json_csv_and_table(spark, tiny_root, capsys):
    root = tiny_root.root
    q = "SELECT category, SUM(records) AS records FROM v_length_histogram GROUP BY category ORDER BY category"
    rc, out, _ = _sql(capsys, q, "--output-root", root, "--format", "json")
    assert rc == 0 and json.loads(out) == [
        {"category": "closed_qa", "records": 1},
        {"category": "open_qa", "records": 2},
    ]
    rc, out, _ = _sql(capsys, q, "--output-root", root, "--format", "csv")
    assert out.splitlines() == ["category,records", "closed_qa,1", "open_qa,2"]
    rc, out, _ = _sql(capsys, q, "--output-root", root)
    assert out.splitlines()[0].split() == ["category", "|", "records"] and out.splitlines()[-1] == "(2 rows)"


def test_sql_file_runs_statements_in_order_and_caps_rows(spark, tiny_root, tmp_path, capsys):
    script = tmp_path / "q.sql"
    script.write_text(
        "-- two queries\nSELECT record_id FROM gold ORDER BY record_id;\nSELECT COUNT(*) AS n FROM gold;\n"
    )
    rc, out, err = _sql(
        capsys, "-f", str(script), "--output-root", tiny_root.root, "--format", "json", "--max-rows", "2"
    )
    assert rc == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == [{"record_id": "a"}, {"record_id": "b"}] and second == [{"n": 3}]
    assert "statement 1: showing the first 2 rows" in err


def test_bad_query_is_one_line_with_the_engine_message_and_exit_1(spark, tiny_root, capsys):
    rc, out, err = _sql(capsys, "SELECT * FROM no_such_table", "--output-root", tiny_root.root)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("dolly-spark sql: error: ") and "no_such_table" in err


def test_writes_need_allow_writes(spark, tiny_root, capsys):
    root = tiny_root.root
    rc, _, err = _sql(capsys, "DELETE FROM gold WHERE split = 'eval'", "--output-root", root)
    assert rc == 1 and "--allow-writes" in err
    assert tables.read_table(spark, tiny_root.gold).count() == 3  # refused before reaching the engine
    rc, _, err = _sql(capsys, "DELETE FROM gold WHERE split = 'eval'", "--output-root", root, "--allow-writes")
    assert rc == 0, err
    assert tables.read_table(spark, tiny_root.gold).count() == 2


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sql", "--output-root", "/tmp"])
    assert exc.value.code == 2 and "give one query" in capsys.readouterr().err


def test_opening_a_root_recreates_the_stored_views_not_the_built_in_ones(spark, tiny_root):
    # A definition only the sql_views table knows: opening the root must create it from there.
    custom = {"v_train_records": (("gold",), "SELECT COUNT(*) AS n FROM {gold} WHERE split = 'train'")}
    views.store_definitions(spark, tiny_root, custom)
    spark.sql("DROP VIEW IF EXISTS v_train_records")
    registered, created = views.open_tables(spark, tiny_root)
    assert "gold" in registered and created == ["v_train_records"]
    assert spark.sql("SELECT n FROM v_train_records").first()[0] == 2


def test_a_stored_definition_that_is_not_a_select_is_refused(spark, tiny_root):
    views.store_definitions(spark, tiny_root, {"v_bad": (("gold",), "SELECT 1; DROP TABLE {gold}")})
    with pytest.raises(ValueError, match="v_bad: its definition must be one SELECT statement"):
        views.open_tables(spark, tiny_root)
    assert tables.table_exists(spark, tiny_root.gold)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), RUST_LOG="error", **extra)
    env.pop("SPARK_REMOTE", None)
    env.update(extra)
    return env


CLIENT = """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()  # SPARK_REMOTE: a plain client, as pyspark --remote or a notebook
print(spark.sql(sys.argv[1]).first()[0], flush=True)
"""


def _client(url: str, query: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, query], env=_env(SPARK_REMOTE=url), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_engine_serves_tables_and_views_to_other_processes_and_follows_new_versions(spark, tiny_root, tmp_path):
    log = tmp_path / "engine.log"  # a file, not a pipe: a full pipe would block the engine
    engine = subprocess.Popen(
        [sys.executable, "-m", "dolly_spark.commands.cli", "engine", "--output-root", tiny_root.root]
        + ["--refresh-seconds", "0.5"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        url = engine.stdout.readline().strip()
        assert url.startswith("sc://127.0.0.1:") and ";session_id=" in url, log.read_text()
        lines = [engine.stdout.readline().strip() for _ in range(4)]
        assert lines[0] == f"export SPARK_REMOTE='{url}'" and "gold" in lines[1] and "v_length_histogram" in lines[2]

        assert _client(url, "SELECT SUM(records) FROM v_length_histogram") == "3"
        # `dolly-spark sql` through SPARK_REMOTE needs no output root: the engine's session has the tables.
        done = subprocess.run(
            [sys.executable, "-m", "dolly_spark.commands.cli", "sql", "SELECT COUNT(*) AS n FROM gold"]
            + ["--format", "csv"],
            env=_env(SPARK_REMOTE=url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stdout) == (0, "n\n3\n"), done.stderr[-2000:]

        # Another writer commits a new gold version: the engine re-creates the views over it.
        more = [("d", "closed_qa", "train", "", 700, 20)]
        tables.write_table(spark, spark.createDataFrame(more, GOLD_MINI_SCHEMA), tiny_root.gold, mode="append")
        deadline = time.monotonic() + 60
        while _client(url, "SELECT SUM(records) FROM v_length_histogram") != "4":
            assert time.monotonic() < deadline, "the engine never picked up gold's new version"
            time.sleep(0.5)
    finally:
        engine.send_signal(signal.SIGINT)
        try:
            rc = engine.wait(timeout=30)
        finally:
            engine.kill()
    assert rc == 0, log.read_text()[-3000:]


def test_run_summary_ends_with_a_sql_command_that_parses(tmp_path):
    from dolly_spark.commands.run import RunConfig, summary_lines

    hint = summary_lines(RunConfig(output_root=str(tmp_path)), [])[-1]
    assert hint.startswith("SQL: dolly-spark sql ")
    argv = shlex.split(hint.removeprefix("SQL: dolly-spark sql "))
    ns = cli.parser_for("sql").parse_args(argv)
    assert (ns.query, ns.output_root) == ("SELECT * FROM v_category_stats", str(tmp_path))
