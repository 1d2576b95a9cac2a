"""``dolly-spark register``: promote a training run's model to the registry under an alias.

The version is tagged with the run's data lineage (gold table@version, silver/bronze versions)
and its eval metrics. Scoring takes ``models:/NAME@ALIAS``.
"""

from __future__ import annotations

from dolly_spark.commands.common import cli_errors, parse_job
from dolly_spark.tracking.registry import RegisterConfig, RegisterResult, register

CONFIG = RegisterConfig


def run(cfg: RegisterConfig, spark=None) -> RegisterResult:
    return register(cfg)


@cli_errors("register")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(RegisterConfig, argv, "register", __doc__)
    result = run(cfg)
    print(f"registered {result.model_name} version {result.version} as @{result.alias} (run {result.run_id})")
    print(f"model uri: {result.model_uri}")
    for k, v in sorted(result.tags.items()):
        print(f"  {k} = {v}")
    return 0
