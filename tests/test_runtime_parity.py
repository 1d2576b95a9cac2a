"""Runtime parity: the whole DAG as a user runs it, on the libraries of the venv running the tests.

`make test` runs this file under every runtime row (docs/databricks.md): the project's lock
(.venv) and one venv per runtimes/*.txt. The DAG runs with its output root on a Volume stand-in
(tests/volume_standin: no appends, no updates), so the Databricks filesystem rules are checked
on every row too.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dolly_spark.ops import runtime
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "volume_standin"
OLDEST_ROW_FILE = REPO / "runtimes" / "dbr-17.3-lts-ml-gpu.txt"


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update({"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **extra})
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DOLLY_PARENT_RUN_ID", "SPARK_REMOTE"):
        env.pop(var, None)  # an earlier test's store is no user override: the run finds its own root's
    return env


def _cli(args, env, timeout=1500):
    return subprocess.run(
        [sys.executable, "-m", "dolly_spark.commands.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_minimum_versions_are_the_oldest_runtime_row():
    pins = dict(
        line.split("==", 1) for line in OLDEST_ROW_FILE.read_text().splitlines() if "==" in line and line[0].isalpha()
    )
    assert runtime.MINIMUM_VERSIONS == {pkg: pins[pkg] for pkg in runtime.MINIMUM_VERSIONS}


def test_unsupported_library_gets_one_line_error_before_any_table(tmp_path):
    # A dist-info first on the path makes this interpreter report transformers 4.40.0.
    fake = tmp_path / "old" / "transformers-4.40.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.40.0\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "old"), env["PYTHONPATH"]])
    root = tmp_path / "root"
    out = _cli(["prepare", "--input", str(DOLLY_JSONL), "--output-root", str(root)], env, timeout=300)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "dolly-spark prepare: transformers 4.40.0 is older than the oldest supported runtime "
        "(Databricks Runtime 17.3 LTS ML: transformers 4.51.3); upgrade it (pip install "
        "'transformers>=4.51.3') or use a newer runtime"
    ], out.stderr[-2000:]
    assert not (root / "tables").exists()


def test_installed_libraries_pass_the_floor():
    runtime.check_supported_libraries()


def test_volume_standin_refuses_appends_and_updates(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    code = (
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1]) / 'f.txt'\n"
        "p.write_text('whole file\\n')\n"
        "for mode in ('a', 'r+'):\n"
        "    try:\n"
        "        open(p, mode)\n"
        "    except OSError as err:\n"
        "        print('refused', mode, err.errno)\n"
    )
    env = _env(DOLLY_VOLUME_STANDIN=str(vol))
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", code, str(vol)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused a 95", "refused r+ 95"]
    assert (vol / "f.txt").read_text() == "whole file\n"


TEXT = "### Instruction:\nSay hi\n\n### Response:\nhello ### End"


def test_tokenizer_saved_by_transformers_5_layout_is_rewritten_to_one_every_row_reads(tmp_path):
    import json

    from dolly_spark.text.tokenizer import SAVED_BY_KEY, load_hf_tokenizer, save_portable_tokenizer

    reference = load_hf_tokenizer(str(TOKENIZER_DIR))
    # transformers 5's own save writes a list of extra special tokens and its own class name, which
    # transformers 4.51 fails on ('list' object has no attribute 'keys'); the portable save does not.
    portable = tmp_path / "portable"
    save_portable_tokenizer(reference, portable)
    config = json.loads((portable / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in config or isinstance(config["extra_special_tokens"], dict)
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config[SAVED_BY_KEY].startswith("transformers ")
    loaded = load_hf_tokenizer(str(portable))
    assert loaded(TEXT)["input_ids"] == reference(TEXT)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (
        reference.pad_token_id,
        reference.eos_token_id,
        len(reference),
    )


def test_tokenizer_that_does_not_load_names_the_release_that_saved_it(tmp_path):
    import json

    from dolly_spark.text.tokenizer import SAVED_BY_KEY, load_hf_tokenizer

    # A tokenizer this release cannot read (here: a truncated tokenizer.json) saved by another.
    (tmp_path / "tokenizer.json").write_text(TOKENIZER_DIR.joinpath("tokenizer.json").read_text()[:1000])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", SAVED_BY_KEY: "transformers 9.0.0"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match=r"saved by transformers 9\.0\.0 and does not load under transformers"):
        load_hf_tokenizer(str(tmp_path))


@pytest.mark.slow
def test_dolly_spark_run_on_400_real_records_with_output_on_a_volume(tmp_path):
    vol = tmp_path / "volume"
    vol.mkdir()
    sample = tmp_path / "dolly_400.jsonl"
    with open(DOLLY_JSONL) as src:
        sample.write_text("".join(itertools.islice(src, 400)))
    env = _env(DOLLY_VOLUME_STANDIN=str(vol), DOLLY_LOCAL_SCRATCH=str(tmp_path / "local_disk"))
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN), env["PYTHONPATH"]])
    root = vol / "dolly"
    args = ["run", "--input", str(sample), "--output-root", str(root), "--tokenizer", str(TOKENIZER_DIR)]
    args += ["--train-max-steps", "4", "--train-max-eval-records", "4", "--evaluate-sample-size", "4"]
    args += ["--score-limit", "16", "--evaluate-max-new-tokens", "4", "--score-max-new-tokens", "4"]
    out = _cli(args, env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    assert "== dolly-spark run: summary ==" in out.stdout

    from deltalake import DeltaTable

    predictions = DeltaTable(str(root / "tables" / "predictions")).to_pandas()
    assert 0 < len(predictions) <= 16
    # Training published whole: a per-run metrics file and a model marked complete.
    model_dir = root / "train" / "model"
    assert (model_dir / "COMPLETE").is_file() and list(model_dir.glob("*.safetensors"))
    assert len(list(model_dir.parent.glob("metrics-*.jsonl"))) == 1
