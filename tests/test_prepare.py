import deltalake

from dolly_spark.prepare import PrepareConfig, run
from tests.conftest import DOLLY_JSONL


def test_prepare_real_data_accounts_for_every_row(spark, tmp_path):
    result = run(PrepareConfig(input=str(DOLLY_JSONL), output_root=str(tmp_path)), spark)
    counts = {c.stage: c for c in result.counts}
    assert counts["bronze"].output_rows == 15011
    silver = deltalake.DeltaTable(str(tmp_path / "tables" / "silver")).to_pyarrow_table()
    quarantine = deltalake.DeltaTable(str(tmp_path / "tables" / "quarantine")).to_pyarrow_table()
    assert silver.num_rows + quarantine.num_rows == 15011
    rows = spark.sql("SELECT category, count(*) AS n FROM silver GROUP BY category").collect()
    assert len(rows) == 8 and sum(r["n"] for r in rows) == silver.num_rows
