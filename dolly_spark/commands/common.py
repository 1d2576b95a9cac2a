"""What every command does the same way: parse its config, set up logging, open a session."""

from __future__ import annotations

import logging

from dolly_spark.ops.config import parse_config
from dolly_spark.ops.runtime import UnsupportedLibraryError, check_supported_libraries


def parse_job(cls, argv, command: str, doc: str | None, level: int = logging.INFO):
    cfg = parse_config(cls, argv, prog=f"dolly-spark {command}", description=doc or "")
    try:
        check_supported_libraries()  # before any table is written
    except UnsupportedLibraryError as err:
        raise SystemExit(f"dolly-spark {command}: {err}") from None  # one line, exit status 1
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cfg


def spark_session():
    from dolly_spark.ops.session import get_spark

    return get_spark()


def log_flat_metrics(prefix: str, values: dict) -> None:
    """Numbers (not bools) of a result dict as ``<prefix><key>`` metrics of the active run."""
    import mlflow

    metrics = {
        f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if metrics:
        mlflow.log_metrics(metrics)
