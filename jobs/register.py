"""spark_python_task script for ``dolly-register``: same flags (``python jobs/register.py --help``)."""

import sys

from dolly_spark.commands.register import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
