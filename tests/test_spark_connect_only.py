import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dolly_spark"
FORBIDDEN = re.compile(
    r"\.rdd\b|\bsparkContext\b|\._jvm\b|\bpyspark\.ml\.(feature|classification|regression|clustering)\b"
)


def test_no_rdd_sparkcontext_or_jvm_under_package():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert not offenders, "Spark Connect only; found:\n" + "\n".join(offenders)


def test_the_check_catches_a_violation(tmp_path):
    sample = "df.rdd.map(f)\nspark.sparkContext\nspark._jvm.foo"
    assert len([ln for ln in sample.splitlines() if FORBIDDEN.search(ln)]) == 3
