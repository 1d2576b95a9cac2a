"""``dolly-spark SUBCOMMAND ...``: one entry point dispatching to each job's ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "prepare": "dolly_spark.prepare",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: dolly-spark {" + ",".join(COMMANDS) + "} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
