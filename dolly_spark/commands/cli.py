"""``dolly-spark COMMAND ...``: one entry point dispatching to each command's ``main(argv)``.

Every command module under ``dolly_spark.commands`` defines ``CONFIG`` (its config dataclass)
and ``main(argv=None)``; each is also its own console script (``dolly-<command>``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "prepare": "dolly_spark.commands.prepare",
    "report": "dolly_spark.commands.report",
    "train": "dolly_spark.commands.train",
    "register": "dolly_spark.commands.register",
    "score": "dolly_spark.commands.score",
    "evaluate": "dolly_spark.commands.evaluate",
    "run": "dolly_spark.commands.run",
    "sql": "dolly_spark.commands.sql",
    "engine": "dolly_spark.commands.engine",
    "serve": "dolly_spark.commands.serve",
    "endpoint": "dolly_spark.commands.endpoint",
}


def job_module(command: str):
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; known: {sorted(COMMANDS)}")
    return importlib.import_module(COMMANDS[command])


def parser_for(command: str) -> argparse.ArgumentParser:
    """The exact argument parser a command's ``main`` uses (bundle tests check task params)."""
    from dolly_spark.ops.config import OneLineParser, add_config_arguments

    module = job_module(command)
    parser = OneLineParser(prog=f"dolly-spark {command}", description=module.__doc__)
    add_config_arguments(parser, module.CONFIG)
    return parser


def usage() -> str:
    return "usage: dolly-spark {" + ",".join(COMMANDS) + "} [options]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"dolly-spark: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    return job_module(argv[0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
