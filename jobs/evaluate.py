"""spark_python_task script for ``dolly-evaluate``: same flags (``python jobs/evaluate.py --help``)."""

import sys

from dolly_spark.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
