"""Joins with the small side as the build side (ops/joins.py) keep the usual join results."""

from pyspark.testing import assertDataFrameEqual

from dolly_spark.ops.joins import anti_join, lookup_join, semi_join


def test_anti_join_is_a_left_anti_join(spark):
    wide = spark.createDataFrame([("a", "x", 1), ("b", "y", 2), ("c", None, 3)], "k string, t string, n int")
    keys = spark.createDataFrame([("b", 0), ("b", 1), ("z", 2)], "k string, other int")  # repeats, a stray key
    assertDataFrameEqual(anti_join(wide, keys, "k"), wide.join(keys, "k", "left_anti"))
    assertDataFrameEqual(
        anti_join(wide, keys, "k"), spark.createDataFrame([("a", "x", 1), ("c", None, 3)], wide.schema)
    )
    assert anti_join(wide, keys, "k").columns == wide.columns


def test_semi_join_is_a_left_semi_join(spark):
    wide = spark.createDataFrame([("a", "x", 1), ("b", "y", 2), ("c", None, 3)], "k string, t string, n int")
    keys = spark.createDataFrame(
        [("b", 0), ("b", 1), ("c", 2), ("z", 3)], "k string, other int"
    )  # repeats, a stray key
    assertDataFrameEqual(semi_join(wide, keys, "k"), wide.join(keys, "k", "left_semi"))
    assertDataFrameEqual(
        semi_join(wide, keys, "k"), spark.createDataFrame([("b", "y", 2), ("c", None, 3)], wide.schema)
    )
    assert semi_join(wide, keys, "k").columns == wide.columns


def test_lookup_join_is_a_left_join_keeping_the_wide_columns_first(spark):
    wide = spark.createDataFrame([("a", "x"), ("b", "y"), ("c", "z")], "k string, t string")
    small = spark.createDataFrame([("a", 7), ("c", 9)], "k string, pack_id long")
    out = lookup_join(small, wide, "k")
    assert out.columns == ["k", "t", "pack_id"]
    assertDataFrameEqual(
        out, spark.createDataFrame([("a", "x", 7), ("b", "y", None), ("c", "z", 9)], "k string, t string, pack_id long")
    )


def test_the_embedded_engine_runs_without_join_swapping(spark, monkeypatch):
    from dolly_spark.ops.session import engine_environ

    monkeypatch.delenv("SAIL_OPTIMIZER__ENABLE_JOIN_SWAP", raising=False)
    assert engine_environ()["SAIL_OPTIMIZER__ENABLE_JOIN_SWAP"] == "false"  # set while the server is built
