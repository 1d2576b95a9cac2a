"""One side of the MERGE contention test: ``python -m tests.reliability.merge_worker ROOT NAME START``.

Every round it stages the same 10 keys the other worker stages, waits for the shared start time
of the round, and merges through ``score.merge_new_rows`` (the production retry loop). Prints one
JSON line: rows it inserted per round.
"""

from __future__ import annotations

import json
import sys
import time

ROUNDS = 8
ROUND_SECONDS = 0.6


def main(root: str, name: str, start: float) -> None:
    from dolly_spark.ops import tables
    from dolly_spark.ops.session import get_spark
    from dolly_spark.serve import score

    spark = get_spark(f"merge_worker_{name}")
    target = tables.TableNames(root=root).predictions
    inserted = []
    for i in range(ROUNDS):
        rows = [(f"k{j:03d}", "m/1", name) for j in range(i * 5, i * 5 + 10)]
        staged = score.staging_ref(target, f"{name}{i}")
        tables.write_table(
            spark, spark.createDataFrame(rows, "row_key string, model_version string, writer string"), staged
        )
        while time.time() < start + i * ROUND_SECONDS:
            time.sleep(0.002)
        inserted.append(score.merge_new_rows(spark, staged, target))
        score.drop_staging(spark, staged)
    print(json.dumps({"writer": name, "inserted": inserted}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
