"""Training staging written by the engine: Parquet shards of the pinned gold version, a manifest
written last, reuse on resume with byte-identical files, and no copy of the table on the driver."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dolly_spark.launch import staging
from dolly_spark.ops import tables

GOLD_DDL = (
    "record_id string, category string, split string, input_ids array<int>, prompt_len int, "
    "seq_len int, pack_id long, silver_version long"
)


def gold_rows(n: int, tag: str, eval_every: int = 7) -> list[tuple]:
    return [
        (f"{tag}-{i:05d}", "open_qa", "eval" if i % eval_every == 0 else "train", [i, i + 1, i + 2], 1, 3, i // 4, 3)
        for i in range(n)
    ]


def digest(paths) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture()
def no_driver_copy(monkeypatch):
    """Fail if anything pulls a DataFrame to the driver as Arrow or pandas."""
    from pyspark.sql.connect.dataframe import DataFrame

    def refuse(self, *a, **k):
        raise AssertionError("staging must not pull the gold table to the driver")

    monkeypatch.setattr(DataFrame, "toArrow", refuse)
    monkeypatch.setattr(DataFrame, "toPandas", refuse)


def test_engine_writes_shards_of_the_pinned_version_with_a_manifest(spark, tmp_path, no_driver_copy):
    names = tables.TableNames(root=str(tmp_path / "root"))
    v0_rows = gold_rows(1000, "v0")
    tables.write_table(spark, spark.createDataFrame(v0_rows, GOLD_DDL), names.gold)
    tables.write_table(spark, spark.createDataFrame(gold_rows(50, "v1"), GOLD_DDL), names.gold)  # v1

    staged = staging.stage_gold(spark, names.gold, 0, tmp_path / "staging", rows_per_shard=100)

    n_eval = sum(1 for r in v0_rows if r[2] == "eval")
    assert (staged.train_records, staged.eval_records) == (1000 - n_eval, n_eval)
    assert staged.gold_version == 0 and staged.silver_version == 3
    assert len(staged.train_files) >= 2, "train should be split across several shards"
    for split, files in (("train", staged.train_files), ("eval", staged.eval_files)):
        assert all(Path(f).parent == Path(staged.directory) / split for f in files)
        read = pq.ParquetDataset(files).read()
        assert read.num_rows == sum(staged.file_rows[f] for f in files)
        assert set(read["split"].to_pylist()) == {split}
        expected = {r[0] for r in v0_rows if r[2] == split}
        assert sorted(read["record_id"].to_pylist()) == sorted(expected)  # every row once, none from v1
    # A pack never straddles two shards (ranks can pack shard by shard).
    owner = {}
    for f in staged.train_files:
        for p in set(pq.read_table(f, columns=["pack_id"])["pack_id"].to_pylist()):
            assert owner.setdefault(p, f) == f
    manifest = json.loads((Path(staged.directory) / "manifest.json").read_text())
    assert manifest["train_files"] == staged.train_files and manifest["train_records"] == staged.train_records


def test_resume_reuses_the_manifest_and_files_byte_for_byte(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path / "root"))
    tables.write_table(spark, spark.createDataFrame(gold_rows(300, "a"), GOLD_DDL), names.gold)
    first = staging.stage_gold(spark, names.gold, 0, tmp_path / "staging", rows_per_shard=64)
    before = digest(first.train_files + first.eval_files)
    again = staging.stage_gold(spark, names.gold, 0, tmp_path / "staging", rows_per_shard=64)
    assert again == first
    assert digest(again.train_files + again.eval_files) == before


def test_partial_staging_without_manifest_is_rebuilt(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path / "root"))
    tables.write_table(spark, spark.createDataFrame(gold_rows(200, "a"), GOLD_DDL), names.gold)
    out = tmp_path / "staging" / "gold_v0" / "train"
    out.mkdir(parents=True)
    (out / "part-stale.parquet").write_bytes(b"half a file")  # a killed run's leftovers
    staged = staging.stage_gold(spark, names.gold, 0, tmp_path / "staging")
    assert not (out / "part-stale.parquet").exists()
    assert pq.ParquetDataset(staged.train_files).read().num_rows == staged.train_records


def test_unknown_split_and_no_train_rows_are_refused_before_writing(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path / "root"))
    rows = [r[:2] + ("test",) + r[3:] for r in gold_rows(3, "x")] + gold_rows(10, "y")
    tables.write_table(spark, spark.createDataFrame(rows, GOLD_DDL), names.gold)
    with pytest.raises(ValueError, match="3 rows whose split"):
        staging.stage_gold(spark, names.gold, 0, tmp_path / "staging")
    only_eval = [r[:2] + ("eval",) + r[3:] for r in gold_rows(5, "z")]
    tables.write_table(spark, spark.createDataFrame(only_eval, GOLD_DDL), names.gold)
    with pytest.raises(ValueError, match="no train rows"):
        staging.stage_gold(spark, names.gold, 1, tmp_path / "staging")
    assert not (tmp_path / "staging" / "gold_v1" / "manifest.json").exists()
