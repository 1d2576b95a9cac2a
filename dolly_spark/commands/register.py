"""``dolly-spark register``: promote a training run's model to the registry under an alias.

The version is tagged with the run's data lineage (gold table@version, silver/bronze versions),
the licences of its sources (``licenses``, ``commercial_use``: true, false or unknown) and its eval
metrics. Scoring takes ``models:/NAME@ALIAS``. ``--require-commercial-use`` refuses (exit 1,
nothing registered) a run whose data is not cleared for commercial use, naming the sources.

The evaluation gate: the alias moves only if the new version is not worse than the version
holding it, measured on the same pinned eval set (gold's eval split at the version the run
trained on): overall eval loss at most ``--gate-tolerance`` worse, no category more than
``--gate-category-tolerance`` worse. A version that fails is still registered, tagged
``gate=failed`` with both models' numbers, and the command exits 1 with one line saying why
(``--gate-warn-only``: exit 0). ``--no-gate`` moves the alias unconditionally. The comparison
is logged to the register run as a table (``gate/comparison.json``).
"""

from __future__ import annotations

import sys

from dolly_spark.commands.common import cli_errors, parse_job
from dolly_spark.tracking.gate import FAILED, GateFailedError, log_gate
from dolly_spark.tracking.registry import CommercialUseRefused, RegisterConfig, RegisterResult, register
from dolly_spark.tracking.runs import job_run

CONFIG = RegisterConfig


def failure_line(result: RegisterResult) -> str:
    return (
        f"gate failed {result.gate.reason}; {result.model_name} version {result.version} is registered "
        f"(gate=failed), @{result.alias} stays on version {result.gate.champion_version}"
    )


def run(cfg: RegisterConfig, spark=None) -> RegisterResult:
    """Register (and gate) inside the register job's run; raises GateFailedError when the gate
    failed, unless ``gate_warn_only``."""
    with job_run("register", cfg) as active:
        result = register(cfg, spark)
        if active is not None:
            log_gate(result.gate, result.version)
        if result.gate.status == FAILED and not cfg.gate_options.warn_only:
            raise GateFailedError(failure_line(result))
    return result


@cli_errors("register")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(RegisterConfig, argv, "register", __doc__)
    try:
        result = run(cfg)
    except CommercialUseRefused as err:
        print(f"dolly-spark register: {err}", file=sys.stderr)
        return 1
    if result.gate.status == FAILED:
        print(f"warning (--gate-warn-only): {failure_line(result)}")
    else:
        print(f"registered {result.model_name} version {result.version} as @{result.alias} (run {result.run_id})")
        print(f"gate {result.gate.status}: {result.gate.reason}")
    print(f"model uri: {result.model_uri} (version {result.alias_holder})")
    for k, v in sorted(result.tags.items()):
        print(f"  {k} = {v}")
    return 0
