"""spark_python_task script for ``dolly-score``: same flags (``python jobs/score.py --help``)."""

import sys

from dolly_spark.commands.score import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
