"""Usage errors: the whole config and the inputs are checked before any
table or MLflow store is written, and each error is one line naming the flag or file.

The commands run in process through ``dolly_spark.commands.cli.main`` (what ``dolly-spark`` runs),
so a failure leaves nothing behind that a real run would not.
"""

from __future__ import annotations

import bz2
import json

import pytest

from dolly_spark.commands import cli

RECORD = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(RECORD) + "\n")
    return p


def assert_nothing_written(root):
    assert not root.exists() or not any(root.iterdir()), sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--dedup-threshold", "1.5"], "threshold"),
        (["--max-instruction-chars", "-1"], "max_instruction_chars"),
        (["--max-response-chars", "0"], "max_response_chars"),
        (["--max-record-tokens", "4"], "max_record_tokens"),
        (["--until", "platinum"], "--until"),
        (["--ingest-chunk-mb", "0"], "ingest_chunk_mb"),
        (["--max-line-bytes", "1023"], "max_line_bytes"),
    ],
)
def test_bad_flag_values_fail_before_anything_is_written(capsys, tmp_path, data, flags, names):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["prepare", "--input", str(data), "--output-root", str(out), *flags])
    assert code == 2
    assert names in last_line(err) and last_line(err).startswith("dolly-spark prepare: error:")
    assert "Traceback" not in err
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "yaml_text, names",
    [
        ("until: platinum\n", "until"),
        ("gold:\n  max_record_tokens: '2048'\n", "max_record_tokens"),
        ("clean:\n  strip_citations: 'false'\n", "strip_citations"),
        ("clean:\n  max_context_chars: -5\n", "max_context_chars"),
        ("dedup:\n  threshold: 1.5\n", "threshold"),
    ],
)
def test_bad_yaml_values_fail_before_anything_is_written(capsys, tmp_path, data, yaml_text, names):
    cfg, out = tmp_path / "cfg.yaml", tmp_path / "out"
    cfg.write_text(yaml_text)
    code, err = run_cli(capsys, ["prepare", "--config", str(cfg), "--input", str(data), "--output-root", str(out)])
    assert code == 2
    assert names in last_line(err) and str(cfg) in last_line(err)
    assert_nothing_written(out)


def test_malformed_yaml_names_the_file(capsys, tmp_path, data):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("clean: {max_instruction_chars: 5\n")
    code, err = run_cli(capsys, ["prepare", "--config", str(cfg), "--input", str(data), "--output-root", "x"])
    assert code == 2 and f"--config {cfg}: not valid YAML" in last_line(err)


def test_a_missing_input_creates_no_mlflow_store(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["prepare", "--input", str(tmp_path / "nope.jsonl"), "--output-root", str(out)])
    assert code == 2
    assert last_line(err) == f"dolly-spark prepare: error: --input {str(tmp_path / 'nope.jsonl')!r} does not exist"
    assert not (out / "mlflow.db").exists()
    assert_nothing_written(out)


def test_run_checks_inputs_before_its_mlflow_store_too(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["run", "--input", str(tmp_path / "nope.jsonl"), "--output-root", str(out)])
    assert code == 2 and "does not exist" in last_line(err)
    assert_nothing_written(out)


def test_an_unsupported_compression_is_a_usage_error(capsys, tmp_path):
    p = tmp_path / "in.jsonl.bz2"
    p.write_bytes(bz2.compress((json.dumps(RECORD) + "\n").encode()))
    code, err = run_cli(capsys, ["prepare", "--input", str(p), "--output-root", str(tmp_path / "out")])
    assert code == 2 and "bz2" in last_line(err) and str(p) in last_line(err)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("where", ["root", "parent"])
def test_an_output_root_that_is_a_file_gets_a_clear_message(capsys, tmp_path, data, where):
    f = tmp_path / "a_file"
    f.write_text("x")
    root = f if where == "root" else f / "out"
    code, err = run_cli(capsys, ["prepare", "--input", str(data), "--output-root", str(root)])
    assert code == 2
    assert "--output-root" in last_line(err) and "is a file" in last_line(err), err
    assert f.read_text() == "x"


def test_a_bad_catalog_fails_on_the_identifier_check_before_databricks(capsys, monkeypatch, data):
    import mlflow

    def no_databricks(*a, **k):
        raise AssertionError("MLflow was touched before the identifier check")

    monkeypatch.setattr(mlflow, "set_tracking_uri", no_databricks)
    code, err = run_cli(capsys, ["prepare", "--input", str(data), "--catalog", "x; DROP TABLE y", "--schema", "s"])
    assert code == 2
    assert last_line(err).startswith("dolly-spark prepare: error: invalid catalog 'x; DROP TABLE y'")


def test_debug_shows_the_traceback(capsys, tmp_path):
    argv = ["prepare", "--input", str(tmp_path / "nope.jsonl"), "--output-root", str(tmp_path / "o")]
    code, err = run_cli(capsys, [*argv, "--debug"])
    assert code == 2 and "Traceback (most recent call last)" in err
    code, err = run_cli(capsys, argv)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unknown_command_says_so(capsys):
    code, err = run_cli(capsys, ["frobnicate"])
    assert code == 2 and "unknown command 'frobnicate'" in err


def test_a_runtime_accounting_failure_is_one_line_with_exit_1(capsys, monkeypatch, tmp_path, data):
    from dolly_spark.commands import prepare as prepare_cmd
    from dolly_spark.prep.accounting import AccountingError

    def lose_rows(cfg, spark):
        raise AccountingError("gold: input 10 != gold 8 + quarantined 1")

    monkeypatch.setattr(prepare_cmd, "spark_session", lambda: None)
    monkeypatch.setattr(prepare_cmd, "run", lose_rows)
    code, err = run_cli(capsys, ["prepare", "--input", str(data), "--output-root", str(tmp_path / "o")])
    assert code == 1
    assert err.strip() == "dolly-spark prepare: error: gold: input 10 != gold 8 + quarantined 1"


def test_an_unreachable_hub_input_is_one_line_before_anything_is_written(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["prepare", "--input", "databricks/databricks-dolly-15k", "--output-root", str(out)])
    assert code == 2 and "Traceback" not in err
    assert last_line(err).startswith("dolly-spark prepare: error: could not download databricks/databricks-dolly-15k")
    assert "--input" in last_line(err)
    assert_nothing_written(out)


@pytest.mark.parametrize("stages", [["prepare"], ["train"]])
def test_run_loads_the_tokenizer_before_anything_is_written(capsys, tmp_path, data, stages):
    out, missing = tmp_path / "out", str(tmp_path / "no_tokenizer")
    argv = ["run", "--input", str(data), "--output-root", str(out), "--tokenizer", missing, "--stages", *stages]
    code, err = run_cli(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert last_line(err).startswith(f"dolly-spark run: error: Could not load tokenizer {missing!r}")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--no-such-flag"],
        ["run", "--train-max-steps", "many"],
        ["train", "--model-d", "/tmp/m"],  # an abbreviation is no flag
        ["prepare", "--until", "platinum"],
    ],
)
def test_a_usage_error_is_exactly_one_line_even_for_run(capsys, argv):
    code, err = run_cli(capsys, argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"dolly-spark {argv[0]}: error: ") and err.rstrip().endswith("(see --help)")
