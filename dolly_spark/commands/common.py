"""What every command does the same way: parse its config, set up logging, open a session, and
turn every failure into one line on stderr: ``dolly-spark <cmd>: error: ...``.

Exit status 2 for usage errors (a flag, config value, input, source, identifier or path that
cannot work), 1 for failures at run time (disk full, permissions, memory, the engine, the hub, a
lost row), 130 when interrupted. An exception of a type none of these rules knows is a bug: it
is one line too, naming its type and asking for a rerun with ``--debug``, which prints the
traceback of any error. ``--verbose`` shows the engine's own log lines.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from dolly_spark.ops.config import ConfigError, LocalRoot, parse_config
from dolly_spark.ops.runtime import UnsupportedLibraryError, check_supported_libraries
from dolly_spark.ops.session import ENGINE_LOG, scoped_environ

# (type name, module): only types of modules already imported are checked (an exception cannot be
# of a type whose module never loaded), so the error path imports nothing.
_USAGE_ERRORS = (
    ("ConfigError", "dolly_spark.ops.config"),
    ("InvalidIdentifierError", "dolly_spark.ops.tables"),
    ("PathOutsideRootError", "dolly_spark.ops.paths"),
    ("SourceError", "dolly_spark.prep.sources"),
    ("UnsupportedInputError", "dolly_spark.prep.ingest"),
    ("InputUnavailableError", "dolly_spark.prep.ingest"),
)
_ENGINE_ERRORS = (
    ("PySparkException", "pyspark.errors"),
    ("RpcError", "grpc"),
    ("MlflowException", "mlflow.exceptions"),
)
# Failures recognised in any message (engine, MLflow, OS): a pattern, what happened, what to do.
_KNOWN_FAILURES = {
    "disk_full": (
        r"no space left on device|disk quota exceeded|database or disk is full|os error 28\b",
        "no space left on device",
        "free space on the disk of the output root (or use another --output-root) and rerun",
    ),
    "permission": (
        r"permission denied|operation not permitted|os error 13\b",
        "permission denied",
        "check that this user can read the input and write under the output root",
    ),
    "read_only": (
        r"read-only file system|os error 30\b",
        "read-only file system",
        "use an --output-root on a writable disk",
    ),
    "message_size": (
        r"larger than max|message larger than|max(imum)? message size",
        "a result too large for one engine message",
        "a huge input line or field? lower --max-line-bytes or the --max-*-chars limits",
    ),
    "memory": (
        r"out of memory|cannot allocate memory|memory limit|resources ?exhausted|outofmemory|os error 12\b",
        "out of memory",
        "give the job more memory, or lower --ingest-chunk-mb and the batch sizes",
    ),
    "engine_gone": (
        r"failed to connect to all addresses|connection refused|statuscode\.unavailable",
        "the engine is unreachable",
        "it may have stopped (out of memory?); rerun, with --verbose to see its log",
    ),
}
_ERRNO_FAILURES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "read_only",
    errno.ENOMEM: "memory",
}
_MAX_DETAIL = 300


def _loaded_types(specs) -> tuple[type, ...]:
    found = []
    for name, module in specs:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def first_line(text: str, limit: int | None = None) -> str:
    """The useful first line of a message: a gRPC status's ``details``, else its first non-empty
    line, whitespace collapsed; cut to ``limit`` characters (messages of other libraries run long)."""
    details = re.search(r'details = "([^"]*)"', text)
    lines = [ln.strip() for ln in (details.group(1) if details else text).splitlines() if ln.strip()]
    line = " ".join(lines[0].split()) if lines else ""
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def _known_failure(text: str) -> str | None:
    """``what: detail; hint`` when ``text`` names a failure of ``_KNOWN_FAILURES``."""
    for pattern, what, hint in _KNOWN_FAILURES.values():
        if re.search(pattern, text, re.IGNORECASE):
            detail = first_line(text, _MAX_DETAIL)
            return f"{what} ({detail}); {hint}" if detail and detail.lower() != what else f"{what}; {hint}"
    return None


def _os_error_line(err: OSError) -> str:
    if err.errno in _ERRNO_FAILURES:
        _, what, hint = _KNOWN_FAILURES[_ERRNO_FAILURES[err.errno]]
        where = f": {err.filename}" if err.filename else ""
        return f"{what}{where}; {hint}"
    return _known_failure(str(err)) or first_line(str(err), _MAX_DETAIL) or type(err).__name__


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit status, one line) for any exception a command can end with."""
    if isinstance(err, _loaded_types(_USAGE_ERRORS)):
        return 2, first_line(str(err)) or type(err).__name__
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(err, MemoryError):
        return 1, "out of memory (MemoryError); " + _KNOWN_FAILURES["memory"][2]
    if isinstance(err, OSError):
        return 1, _os_error_line(err)
    if isinstance(err, _loaded_types(_ENGINE_ERRORS)):
        return 1, _known_failure(str(err)) or f"{type(err).__name__}: {first_line(str(err), _MAX_DETAIL)}"
    if type(err).__module__.startswith("dolly_spark."):  # raised on purpose, with its own message
        return 1, first_line(str(err)) or type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        code, line = describe_error(cause)
        if not line.startswith("unexpected "):
            return code, line
    known = _known_failure(str(err))
    if known:
        return 1, known
    detail = first_line(str(err), _MAX_DETAIL)
    return 1, f"unexpected {type(err).__name__}: {detail} (a bug? rerun with --debug for the traceback)"


def quiet_progress_bars(argv: list[str]):
    """MLflow's artifact progress bars only on a terminal (or with --verbose): piped, each redraw
    is one more log line. Scoped to the command; a value the user set is kept."""
    if "--verbose" in argv or sys.stderr.isatty() or "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" in os.environ:
        return contextlib.nullcontext()
    return scoped_environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def cli_errors(command: str):
    """Decorate a command's ``main(argv)``: any exception becomes one line on stderr and an exit
    status (``describe_error``); ``--debug`` prints the traceback first."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            try:
                with quiet_progress_bars(argv):
                    return main(argv)
            except (Exception, KeyboardInterrupt) as err:
                if "--debug" in argv:
                    traceback.print_exc()
                code, line = describe_error(err)
                print(f"dolly-spark {command}: error: {line}", file=sys.stderr)
                return code

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
    if not isinstance(cfg, LocalRoot):
        return
    check_output_root(cfg.output_root)
    if getattr(cfg, "catalog", None) or cfg.output_root:
        try:
            cfg.table_names()  # identifiers, and the few root characters delta-rs cannot open
        except ValueError as err:
            raise ConfigError(str(err)) from err


def check_tokenizer(src: str) -> None:
    """Load the tokenizer on the driver before anything is written: an unreachable hub or a bad
    path fails here in seconds, not at the gold stage after every earlier table was rewritten."""
    from dolly_spark.text.tokenizer import TokenizerLoadError, load_fast_tokenizer

    try:
        load_fast_tokenizer(src)
    except TokenizerLoadError as err:
        raise ConfigError(str(err)) from err


def parse_job(cls, argv, command: str, doc: str | None, level: int = logging.INFO):
    """The command's config, checked; logging at ``level`` (INFO with ``--verbose``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(cls, argv, prog=f"dolly-spark {command}", description=doc or "")
    try:
        check_supported_libraries()  # before any table is written
    except UnsupportedLibraryError as err:
        raise SystemExit(f"dolly-spark {command}: {err}") from None  # one line, exit status 1
    verbose = "--verbose" in argv
    logging.basicConfig(
        level=min(level, logging.INFO) if verbose else level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The embedded engine's own INFO lines (sessions opened and closed, shutdown) only when asked.
    logging.getLogger(ENGINE_LOG).setLevel(logging.INFO if verbose else logging.WARNING)
    check_location(cfg)
    return cfg


def spark_session():
    from dolly_spark.ops.session import get_spark

    return get_spark()
