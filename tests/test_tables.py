import pytest

from dolly_spark.ops.tables import InvalidIdentifierError, TableNames, read_table, table_version, write_table

BAD = ["a;b", "a'b", "a`b", "a b", "a.b", "", "drop table x--", 'a"b', "ä"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_identifiers_are_rejected(bad):
    with pytest.raises(InvalidIdentifierError, match=r"A-Za-z0-9_"):
        TableNames(catalog=bad, schema="s")
    with pytest.raises(InvalidIdentifierError):
        TableNames(catalog="c", schema=bad)
    with pytest.raises(InvalidIdentifierError):
        TableNames(catalog="c", schema="s", overrides={"silver": bad}).ref("silver")


def test_uc_three_part_names():
    names = TableNames(catalog="main", schema="dolly")
    ref = names.ref("silver")
    assert ref.name == "main.dolly.silver" and ref.path is None
    assert ref.sql == "`main`.`dolly`.`silver`"


def test_local_paths_and_unknown_table(tmp_path):
    names = TableNames(root=str(tmp_path))
    assert names.gold.path == str(tmp_path.resolve() / "tables" / "gold")
    with pytest.raises(KeyError):
        names.ref("nope")
    # Any local root: its path is kept as named (quoting is tested in test_security.py).
    assert TableNames(root=str(tmp_path / "it's")).gold.path == str(tmp_path.resolve() / "it's" / "tables" / "gold")


def test_write_read_version_and_sql_by_name(spark, tmp_path):
    names = TableNames(root=str(tmp_path))
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id int, v string")
    assert write_table(spark, df, names.metrics) == 0
    assert write_table(spark, df, names.metrics, mode="append") == 1
    assert read_table(spark, names.metrics).count() == 4
    assert read_table(spark, names.metrics, version=0).count() == 2
    assert table_version(spark, names.metrics) == 1
    assert spark.sql("SELECT count(*) AS n FROM metrics").collect()[0]["n"] == 4
