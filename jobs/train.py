"""spark_python_task script for ``dolly-train``: same flags (``python jobs/train.py --help``)."""

import sys

from dolly_spark.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
