"""spark_python_task script for ``dolly-report``: same flags (``python jobs/report.py --help``)."""

import sys

from dolly_spark.commands.report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
