"""Connected components of dedup's verified edges."""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dolly_spark.ops.workdir import WorkDir

log = logging.getLogger(__name__)


def clusters_union_find(edges: DataFrame) -> DataFrame:
    """Components of the collected edge list: ``record_id, cluster`` (cluster = min record_id).

    For edge lists that fit the driver comfortably (``union_find_max_edges``).
    """
    spark = edges.sparkSession
    table = edges.select("id_a", "id_b").toArrow()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(table.column("id_a").to_pylist(), table.column("id_b").to_pylist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            parent[hi] = lo  # the smaller id is always the root: root = min of the component
    rows = sorted((x, find(x)) for x in parent)
    pdf = pd.DataFrame(rows, columns=["record_id", "cluster"], dtype=object)
    return spark.createDataFrame(pdf, "record_id string, cluster string")


def clusters_label_propagation(edges: DataFrame, max_iterations: int, work: WorkDir) -> DataFrame:
    """Components by iterative min-label propagation with joins: ``record_id, cluster``.

    Each round a node takes the minimum label among itself and its neighbours, then jumps to its
    label's label (pointer jumping: fewer rounds on long chains). Labels are
    materialised every round so the plan does not grow with the iteration count.
    """
    both = edges.select(F.col("id_a").alias("src"), F.col("id_b").alias("dst")).unionByName(
        edges.select(F.col("id_b").alias("src"), F.col("id_a").alias("dst"))
    )
    both = work.materialize(both, "lp_edges")
    labels = work.materialize(
        both.select(F.col("src").alias("record_id")).distinct().withColumn("cluster", F.col("record_id")),
        "lp_labels_0",
    )
    for i in range(1, max_iterations + 1):
        from_neighbours = both.join(labels.withColumnRenamed("record_id", "dst"), "dst").select(
            F.col("src").alias("record_id"), "cluster"
        )
        lowest = from_neighbours.unionByName(labels).groupBy("record_id").agg(F.min("cluster").alias("cluster"))
        jumped = lowest.join(
            lowest.select(F.col("record_id").alias("cluster"), F.col("cluster").alias("cluster_of_cluster")),
            "cluster",
        ).select("record_id", F.least("cluster", "cluster_of_cluster").alias("cluster"))
        new = work.materialize(jumped, f"lp_labels_{i}")
        changed = (
            new.join(labels.withColumnRenamed("cluster", "old"), "record_id")
            .where(F.col("cluster") != F.col("old"))
            .count()
        )
        labels = new
        log.info("label propagation round %d: %d labels changed", i, changed)
        if changed == 0:
            return labels
    raise RuntimeError(f"label propagation did not converge in {max_iterations} rounds")


def clusters(edges: DataFrame, union_find_max_edges: int, max_iterations: int, work: WorkDir) -> tuple[DataFrame, str]:
    """Components of the verified edges, choosing the algorithm by edge count.

    Returns (``record_id, cluster`` frame, method name). Both give the min record_id as label.
    """
    n = edges.count()
    if n <= union_find_max_edges:
        return clusters_union_find(edges), "union_find"
    return clusters_label_propagation(edges, max_iterations, work), "label_propagation"
