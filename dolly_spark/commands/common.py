"""What every command does the same way: parse its config, set up logging, open a session, and
turn known errors into one line (``dolly-spark <cmd>: error: ...``; ``--debug`` adds the traceback)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from dolly_spark.ops.config import ConfigError, Location, parse_config
from dolly_spark.ops.runtime import UnsupportedLibraryError, check_supported_libraries


def _usage_errors() -> tuple[type[BaseException], ...]:
    from dolly_spark.ops.paths import PathOutsideRootError
    from dolly_spark.ops.tables import InvalidIdentifierError

    return (ConfigError, InvalidIdentifierError, PathOutsideRootError)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from dolly_spark.ops.lock import ConcurrentRunError
    from dolly_spark.ops.manifest import NotCommittedError
    from dolly_spark.prep.accounting import AccountingError

    return (AccountingError, ConcurrentRunError, NotCommittedError)


def cli_errors(command: str):
    """Decorate a command's ``main(argv)``: usage errors (bad config, flag, input, identifier)
    exit 2 and known runtime failures exit 1, each as one line on stderr. Anything else is a bug
    and keeps its traceback. ``--debug`` prints the traceback of the known ones too."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(argv)
            except _usage_errors() + _runtime_errors() as err:
                if "--debug" in argv:
                    traceback.print_exc()
                msg = " ".join(str(err).split("\n")[:1]) or type(err).__name__
                print(f"dolly-spark {command}: error: {msg}", file=sys.stderr)
                return 2 if isinstance(err, _usage_errors()) else 1

        return run

    return wrap


def check_output_root(root: str | None) -> None:
    """An output root (or a parent of it) that is a file fails here, not as "File exists" later."""
    if not root:
        return
    p = Path(root).absolute()
    for q in (p, *p.parents):
        if not q.exists():
            continue
        if not q.is_dir():
            where = "" if q == p else f" ({q} is a file)"
            raise ConfigError(f"--output-root {root}: is a file, not a directory{where}")
        if not os.access(q, os.W_OK | os.X_OK):
            raise ConfigError(f"--output-root {root}: {q} is not writable")
        return


def check_location(cfg) -> None:
    """The root or catalog/schema of a job, checked before any session, table or MLflow store."""
    if not isinstance(cfg, Location):
        return
    check_output_root(cfg.output_root)
    if cfg.catalog or cfg.output_root:
        try:
            cfg.table_names()  # identifiers and root characters
        except ValueError as err:
            raise ConfigError(str(err)) from err


def parse_job(cls, argv, command: str, doc: str | None, level: int = logging.INFO):
    cfg = parse_config(cls, argv, prog=f"dolly-spark {command}", description=doc or "")
    try:
        check_supported_libraries()  # before any table is written
    except UnsupportedLibraryError as err:
        raise SystemExit(f"dolly-spark {command}: {err}") from None  # one line, exit status 1
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_location(cfg)
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
