"""Source licences: the SPDX table, how a source's licence is resolved, and the licences carried
from prepare (result, manifest) through the train run to the registered version, where
``--require-commercial-use`` refuses non-commercial data."""

import json

import pytest

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import parse_config
from dolly_spark.prep import licenses
from dolly_spark.prep.prepare import PrepareConfig
from dolly_spark.prep.sources import SourceConfig
from dolly_spark.tracking import lineage, models, registry, runs
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import tiny_train_config

ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Give an antonym of cold.", "input": "", "output": "Hot."},
]


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOLLY_TOKENIZER", str(TOKENIZER_DIR))


# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lid", ["CC-BY-NC-4.0", "CC-BY-NC-SA-3.0", "CC-BY-NC-ND-4.0", "CC-BY-NC-2.0", "CC-BY-NC-3.0-DE", "NCGL-UK-2.0"]
)
def test_non_commercial_ids_are_false(lid):
    assert licenses.commercial_use(lid) == "false"


@pytest.mark.parametrize(
    "lid",
    ["Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "CC0-1.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0"]
    + ["CC-BY-SA-4.0", "ODC-By-1.0", "CDLA-Permissive-2.0", "GPL-3.0-only", "ODbL-1.0"],
)
def test_permissive_and_copyleft_ids_are_true(lid):
    assert licenses.commercial_use(lid) == "true"


@pytest.mark.parametrize("lid", ["unknown", "CC-BY-ND-4.0", "LicenseRef-internal", "NCSA", "Proprietary", None])
def test_anything_else_is_unknown(lid):
    # NCSA holds "NC" but not the CC NonCommercial element: not mistaken for non-commercial.
    assert licenses.commercial_use(lid) == "unknown"


def test_ids_match_case_insensitively_and_are_stored_canonical():
    assert licenses.canonical("cc-by-sa-3.0") == "CC-BY-SA-3.0"
    assert licenses.canonical("apache-2.0") == "Apache-2.0" and licenses.canonical("odc-by-1.0") == "ODC-By-1.0"
    assert licenses.canonical("cc-by-nc-4.0") == "CC-BY-NC-4.0"
    assert licenses.canonical("UNKNOWN") == "unknown"
    assert licenses.commercial_use("mit") == "true" and licenses.commercial_use("cc-by-nc-sa-4.0") == "false"


@pytest.mark.parametrize("bad", ["", "MIT OR Apache-2.0", "CC BY-SA", "-MIT", "MIT;GPL"])
def test_what_cannot_be_an_spdx_id_is_refused(bad):
    with pytest.raises(ValueError, match="is not an SPDX licence id"):
        licenses.canonical(bad)


def test_combine_false_wins_then_unknown_then_true():
    assert licenses.combine(["true", "true"]) == "true"
    assert licenses.combine(["true", "unknown"]) == "unknown"
    assert licenses.combine(["true", "unknown", "false"]) == "false"
    assert licenses.combine(["false"]) == "false"
    assert licenses.combine([]) == "unknown"  # no sources known: not cleared
    mix = {"databricks-dolly-15k": "CC-BY-SA-3.0", "tickets": "unknown", "alpaca-data": "CC-BY-NC-4.0"}
    assert licenses.combined_use(mix) == "false"
    assert licenses.offending(mix) == [("alpaca-data", "CC-BY-NC-4.0"), ("tickets", "unknown")]
    assert licenses.offending({"d": "MIT"}) == []


def test_licenses_text_round_trips():
    mix = {"databricks-dolly-15k": "CC-BY-SA-3.0", "tickets": "unknown"}
    assert licenses.to_text(mix) == "databricks-dolly-15k=CC-BY-SA-3.0;tickets=unknown"
    assert licenses.from_text(licenses.to_text(mix)) == mix
    assert licenses.from_text("unknown") == {} == licenses.from_text(None)


# --- a source's licence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "databricks/databricks-dolly-15k",
        "hf://datasets/databricks/databricks-dolly-15k",
        "../shared/data/databricks-dolly-15k.jsonl",
        "/Volumes/main/raw/files/databricks-dolly-15k-copy.jsonl.gz",
    ],
)
def test_dolly_15k_by_hub_id_or_file_name_is_cc_by_sa(uri):
    assert SourceConfig(uri=uri).resolved_license == "CC-BY-SA-3.0"


def test_explicit_licence_wins_and_others_are_unknown():
    assert SourceConfig(uri="/data/alpaca_data.json", preset="alpaca").resolved_license == "unknown"
    assert SourceConfig(uri="/data/dolly.jsonl").resolved_license == "unknown"  # not known by its name
    assert SourceConfig(uri="/data/a.json", license="cc-by-nc-4.0").resolved_license == "CC-BY-NC-4.0"
    dolly_relabelled = SourceConfig(uri="/d/databricks-dolly-15k.jsonl", license="unknown")
    assert dolly_relabelled.resolved_license == "unknown"
    with pytest.raises(ValueError, match=r"^source /data/a.json: license 'CC BY' is not an SPDX licence id"):
        SourceConfig(uri="/data/a.json", license="CC BY")


def test_licence_from_yaml_and_a_bad_one_is_one_line(tmp_path, capsys):
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        "  - uri: ../shared/data/databricks-dolly-15k.jsonl\n"
        "  - uri: /data/alpaca_data.json\n    name: alpaca-data\n    preset: alpaca\n    license: CC-BY-NC-4.0\n"
    )
    cfg = parse_config(PrepareConfig, ["--config", str(path)], "prepare")
    assert [s.resolved_license for s in cfg.source_list()] == ["CC-BY-SA-3.0", "CC-BY-NC-4.0"]
    path.write_text("sources:\n  - uri: /data/a.json\n    license: some licence\n")
    with pytest.raises(SystemExit):
        parse_config(PrepareConfig, ["--config", str(path)], "prepare")
    err = capsys.readouterr().err.strip()
    assert "sources[0]: source /data/a.json: license 'some licence' is not an SPDX licence id" in err
    assert "\n" not in err


def test_require_commercial_use_is_one_field_for_register_and_run(tmp_path):
    from dolly_spark.commands.run import RunConfig

    assert parse_config(registry.RegisterConfig, ["--require-commercial-use"], "r").require_commercial_use
    assert not parse_config(registry.RegisterConfig, [], "r").require_commercial_use
    run = parse_config(RunConfig, ["--output-root", str(tmp_path), "--register-require-commercial-use"], "run")
    assert run.register.require_commercial_use
    path = tmp_path / "run.yaml"
    path.write_text("register:\n  require_commercial_use: true\n")
    assert parse_config(
        RunConfig, ["--config", str(path), "--output-root", str(tmp_path)], "run"
    ).register.require_commercial_use


def test_a_manifest_from_before_details_takes_them_on_its_next_commit(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path))
    old = "run_id string, status string, until string, versions string, pid long, host string, at string"
    row = ("r0", "committed", "gold", json.dumps({"gold": 0}), 1, "h", "2020-01-01T00:00:00.000000")
    tables.write_table(spark, spark.createDataFrame([row], old), names.manifest, mode="append")
    assert manifest.latest(spark, names).details == {} and manifest.details_for(spark, names, "gold", 0) == {}
    details = {"licenses": {"a": "MIT"}, "commercial_use": "true"}
    manifest.commit(spark, names, "r1", "gold", {"gold": 1}, details)
    assert manifest.latest(spark, names).details == details
    assert manifest.details_for(spark, names, "gold", 1) == details
    assert manifest.details_for(spark, names, "gold", 0) == {}  # the older run recorded none
    assert manifest.details_for(spark, names, "gold", 7) is None  # no committed run wrote it


# --- a train run without licences, and one whose data is cleared ----------------------------------


def _fake_train_run(spark, root, model_dir, found):
    """A train run as log_training_run leaves it (no training), then tagged with licences ``found``."""
    from dataclasses import dataclass

    import mlflow

    @dataclass
    class Cfg:
        output_root: str

    names = tables.TableNames(root=str(root))
    ddl = "record_id string, split string, instruction string, response string"
    version = tables.write_table(spark, spark.createDataFrame([("r1", "train", "q", "a")], ddl), names.gold)
    result = {"model_dir": str(model_dir), "gold_table": names.gold.path, "gold_version": version, "final_step": 1}
    with runs.job_run("train", Cfg(str(root))) as run:
        models.log_training_run(Cfg(str(root)), result, spark=spark, names=names)
        mlflow.set_tags(lineage.license_tags(found))
    return run.info.run_id


def test_a_run_without_licence_info_is_unknown_and_refused_when_required(tmp_path, tiny_model_dir):
    """A run logged before licences were carried: no data.* tags at all."""
    import dataclasses
    from dataclasses import dataclass

    from mlflow import MlflowClient

    @dataclass
    class Cfg:
        output_root: str

    with runs.job_run("train", Cfg(str(tmp_path))) as run:
        models.log_dolly_model(tiny_model_dir)
    run_id = run.info.run_id
    assert "data.licenses" not in MlflowClient().get_run(run_id).data.tags
    cfg = registry.RegisterConfig(output_root=str(tmp_path), run_id=run_id, model_name="old", gate=False)
    with pytest.raises(registry.CommercialUseRefused, match=f"run {run_id} records no data licences"):
        registry.register(dataclasses.replace(cfg, require_commercial_use=True))
    assert MlflowClient().search_registered_models() == []
    mv = MlflowClient().get_model_version("old", str(registry.register(cfg).version))
    assert (mv.tags["licenses"], mv.tags["commercial_use"]) == ("unknown", "unknown")


def test_cleared_data_registers_with_require_commercial_use(spark, tmp_path, tiny_model_dir):
    from mlflow import MlflowClient

    run_id = _fake_train_run(spark, tmp_path, tiny_model_dir, {"databricks-dolly-15k": "CC-BY-SA-3.0", "docs": "MIT"})
    # log_training_run found no prepare run behind this hand-written gold: unknown, as logged.
    assert MlflowClient().get_run(run_id).data.params["data.commercial_use"] == "unknown"
    cfg = registry.RegisterConfig(
        output_root=str(tmp_path), run_id=run_id, model_name="ok", gate=False, require_commercial_use=True
    )
    mv = MlflowClient().get_model_version("ok", str(registry.register(cfg).version))
    assert mv.tags["commercial_use"] == "true"
    assert mv.tags["licenses"] == "databricks-dolly-15k=CC-BY-SA-3.0;docs=MIT"


# --- end to end: prepare two sources -> train -> register ------------------------------------------


def _two_sources(tmp_path) -> PrepareConfig:
    from dolly_spark.prep.gold import GoldConfig

    dolly = tmp_path / "databricks-dolly-15k.jsonl"
    with open(DOLLY_JSONL) as src:
        dolly.write_text("".join(next(src) for _ in range(60)))
    alpaca = tmp_path / "alpaca_data.json"
    alpaca.write_text(json.dumps(ALPACA))
    return PrepareConfig(
        output_root=str(tmp_path / "root"),
        sources=(
            SourceConfig(uri=str(dolly)),
            SourceConfig(uri=str(alpaca), name="alpaca-data", preset="alpaca", license="CC-BY-NC-4.0"),
        ),
        categories="any",
        # A quarter to eval, so a few dozen records give the train run something to evaluate.
        gold=GoldConfig(tokenizer=str(TOKENIZER_DIR), eval_size=1, eval_reference_rows=4, max_record_tokens=256),
    )


def test_licences_flow_from_prepare_to_the_version_and_gate_registration(spark, tmp_path, capsys):
    from mlflow import MlflowClient

    from dolly_spark.commands import register as register_cmd
    from dolly_spark.commands import train as train_cmd
    from dolly_spark.prep.prepare import run as prepare

    cfg = _two_sources(tmp_path)
    result = prepare(cfg, spark)
    expected = {"databricks-dolly-15k": "CC-BY-SA-3.0", "alpaca-data": "CC-BY-NC-4.0"}
    assert result.details["licenses"] == expected and result.details["commercial_use"] == "false"
    assert result.details["sources"]["alpaca-data"]["license"] == "CC-BY-NC-4.0"
    from dolly_spark.commands.prepare import format_summary

    line = "licences: databricks-dolly-15k=CC-BY-SA-3.0, alpaca-data=CC-BY-NC-4.0 -> commercial_use=false"
    assert line in format_summary(result).splitlines()
    names = cfg.table_names()
    committed = manifest.latest(spark, names)
    assert committed.details == {"licenses": expected, "commercial_use": "false"}

    train = tiny_train_config(cfg.output_root, str(TOKENIZER_DIR))
    trained, run_id = train_cmd.run(train, spark)
    assert trained.gold_version == committed.versions["gold"]
    run = MlflowClient().get_run(run_id)
    text = "databricks-dolly-15k=CC-BY-SA-3.0;alpaca-data=CC-BY-NC-4.0"
    assert run.data.tags["data.licenses"] == run.data.params["data.licenses"] == text
    assert run.data.tags["data.commercial_use"] == run.data.params["data.commercial_use"] == "false"

    argv = ["--output-root", cfg.output_root, "--run-id", run_id, "--model-name", "mix"]
    capsys.readouterr()
    assert register_cmd.main([*argv, "--require-commercial-use"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "dolly-spark register: refused: training data is not cleared for commercial use: "
        "alpaca-data (CC-BY-NC-4.0) -> commercial_use=false"
    )
    assert MlflowClient().search_registered_models() == []  # nothing registered

    assert register_cmd.main(argv) == 0
    mv = MlflowClient().get_model_version_by_alias("mix", "champion")
    assert mv.tags["commercial_use"] == "false" and mv.tags["licenses"] == text
    assert mv.tags[lineage.TAG_GOLD_VERSION] == str(committed.versions["gold"])
