"""Any ``dolly-spark`` command as a ``spark_python_task``: ``python_file: ../../jobs/dolly_spark_task.py``
with ``parameters: [COMMAND, --flag, value, ...]``, the wheel installed as a task library.

The bundle's own tasks use ``python_wheel_task`` (the console scripts); this file is for jobs that
run a Python file instead, such as ones defined outside the bundle.
"""

import sys

from dolly_spark.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
