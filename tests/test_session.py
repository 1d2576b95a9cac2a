from dolly_spark.ops import session


def test_engine_detection(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert session.detect_engine().name == "sail"
    monkeypatch.setenv("SPARK_REMOTE", "sc://example:15002")
    assert session.detect_engine() == session.Engine("remote", "sc://example:15002")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert session.detect_engine().name == "databricks"


def test_embedded_session_runs_sql(spark):
    assert spark.sql("SELECT 1 + 1 AS two").collect()[0]["two"] == 2
