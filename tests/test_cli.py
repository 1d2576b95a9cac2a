"""The ``dolly-spark`` dispatcher, and ``jobs/dolly_spark_task.py`` (the spark_python_task form of it)."""

import subprocess
import sys
from pathlib import Path

import pytest

from dolly_spark.commands import cli

TASK_SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "dolly_spark_task.py"


def task(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TASK_SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_a_config_and_a_main(command):
    module = cli.job_module(command)
    assert callable(module.main) and module.CONFIG is not None
    assert cli.parser_for(command).prog == f"dolly-spark {command}"


def test_the_task_script_runs_a_command_with_its_flags():
    out = task("score", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: dolly-spark score") and "--model-uri" in out.stdout


def test_the_task_script_refuses_an_unknown_command_in_one_line():
    out = task("deploy")
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == "dolly-spark: unknown command 'deploy'"


def test_engine_offers_no_catalog_flag_it_would_refuse():
    flags = {o for a in cli.parser_for("engine")._actions for o in a.option_strings}
    assert "--output-root" in flags and not {"--catalog", "--schema"} & flags


def test_score_split_all_keeps_every_row_and_an_empty_split_is_refused(capsys):
    from dolly_spark.ops.config import parse_config
    from dolly_spark.serve.score import ALL_SPLITS, ScoreConfig

    assert parse_config(ScoreConfig, ["--split", "all"], prog="s").split == ALL_SPLITS == "all"
    assert parse_config(ScoreConfig, [], prog="s").split == "eval"
    with pytest.raises(SystemExit):
        parse_config(ScoreConfig, ["--split", ""], prog="s")
    assert "split: give a split value, or 'all' for every row" in capsys.readouterr().err
