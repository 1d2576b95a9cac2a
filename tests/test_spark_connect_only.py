"""Spark Connect only: no RDDs, SparkContext, JVM handles or pyspark.ml estimators in the package
(the DeepSpeed distributor, ``pyspark.ml.torch``, is allowed)."""

import re
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dolly_spark"
FORBIDDEN = re.compile(
    r"\.rdd\b|\bsparkContext\b|\._jvm\b|\bpyspark\.ml\.(feature|classification|regression|clustering)\b"
)


def forbidden_uses(package_root: Path) -> list[str]:
    """``file:line: text`` of every forbidden use in the .py files under ``package_root``."""
    offenders = []
    for path in sorted(package_root.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(package_root.parent)}:{n}: {line.strip()}")
    return offenders


def test_no_rdd_sparkcontext_or_jvm_under_package():
    offenders = forbidden_uses(PACKAGE)
    assert not offenders, "Spark Connect only; found:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "planted",
    [
        "rows = df.rdd.map(lambda r: r)",
        "sc = spark.sparkContext",
        "jvm = spark._jvm",
        "from pyspark.ml.feature import MinHashLSH",
        "import pyspark.ml.clustering",
    ],
)
def test_the_scanner_catches_a_violation_planted_in_a_copy_of_the_package(tmp_path, planted):
    copy = tmp_path / "dolly_spark"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert forbidden_uses(copy) == []  # the copy is as clean as the package
    target = copy / "prep" / "__init__.py"
    target.write_text(target.read_text() + f"\n\ndef _planted(df, spark):\n    {planted}\n")
    found = forbidden_uses(copy)
    assert len(found) == 1 and found[0].startswith("dolly_spark/prep/__init__.py:") and planted in found[0]


def test_the_deepspeed_distributor_is_allowed(tmp_path):
    copy = tmp_path / "dolly_spark"
    copy.mkdir()
    (copy / "launch.py").write_text("from pyspark.ml.torch.distributor import TorchDistributor\n")
    assert forbidden_uses(copy) == []
