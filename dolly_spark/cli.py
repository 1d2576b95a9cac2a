"""``dolly-spark SUBCOMMAND ...``: one entry point dispatching to each job's ``main(argv)``.

Every job module defines ``CONFIG`` (its config dataclass), ``run(cfg, spark)`` and
``main(argv=None)``; each is also its own console script (``dolly-<command>``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "prepare": "dolly_spark.prepare",
    "report": "dolly_spark.report",
    "train": "dolly_spark.launch",
    "register": "dolly_spark.register",
    "score": "dolly_spark.score",
    "evaluate": "dolly_spark.evaluate",
    "run": "dolly_spark.pipeline",
}


def job_module(command: str):
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; known: {sorted(COMMANDS)}")
    return importlib.import_module(COMMANDS[command])


def parser_for(command: str) -> argparse.ArgumentParser:
    """The exact argument parser a command's ``main`` uses (bundle tests check task params)."""
    from dolly_spark.config import add_config_arguments

    module = job_module(command)
    parser = argparse.ArgumentParser(prog=f"dolly-spark {command}", description=module.__doc__)
    add_config_arguments(parser, module.CONFIG)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: dolly-spark {" + ",".join(COMMANDS) + "} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return job_module(argv[0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
