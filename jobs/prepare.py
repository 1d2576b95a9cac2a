"""spark_python_task script for ``dolly-prepare``: same flags (``python jobs/prepare.py --help``)."""

import sys

from dolly_spark.commands.prepare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
