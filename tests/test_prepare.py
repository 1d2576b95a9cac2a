import deltalake

from dolly_spark.prep.prepare import PrepareConfig, run
from tests.shared_data import DOLLY_JSONL


def _rows(root, name):
    return deltalake.DeltaTable(str(root / "tables" / name)).to_pyarrow_table()


def test_prepare_real_data_accounts_for_every_row(spark, tmp_path):
    result = run(PrepareConfig(input=str(DOLLY_JSONL), output_root=str(tmp_path)), spark)
    counts = {c.stage: c for c in result.counts}
    assert list(counts) == ["bronze", "silver", "dedup", "gold"]
    assert counts["bronze"].output_rows == 15011

    # Read back with delta-rs (not the engine that wrote them): raw = gold + quarantine + duplicates.
    silver, quarantine = _rows(tmp_path, "silver"), _rows(tmp_path, "quarantine")
    duplicates, gold = _rows(tmp_path, "duplicates"), _rows(tmp_path, "gold")
    assert gold.num_rows + quarantine.num_rows + duplicates.num_rows == 15011
    assert silver.num_rows == gold.num_rows + duplicates.num_rows + quarantine.num_rows  # no silver rejects here
    ids = (
        set(gold["record_id"].to_pylist())
        | set(quarantine["record_id"].to_pylist())
        | set(duplicates["record_id"].to_pylist())
    )
    assert len(ids) == 15011  # each record in exactly one place
    assert set(quarantine["reason"].to_pylist()) <= {"too_long"}  # the real data is clean apart from length
    # Dolly holds out 200 of 15,011 (train_dolly.py --test-size 200): a hash split lands near that
    assert 150 < counts["gold"].details["split_counts"]["eval"] < 260

    rows = spark.sql("SELECT category, count(*) AS n FROM silver GROUP BY category").collect()
    assert len(rows) == 8 and sum(r["n"] for r in rows) == silver.num_rows
    metrics = spark.sql(
        f"SELECT stage, input_rows, output_rows FROM metrics WHERE run_id = '{result.run_id}'"
    ).collect()
    assert {r["stage"] for r in metrics} == {"bronze", "silver", "dedup", "gold"}
