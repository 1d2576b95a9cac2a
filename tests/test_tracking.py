"""MLflow tracking: store resolution, job runs (config, git, engine, nesting), metrics table,
report artifacts, and gold lineage checked against the Delta table's real history."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dolly_spark.ops import mlflow_store, tables
from dolly_spark.ops.paths import PathOutsideRootError
from dolly_spark.prep.accounting import StageCount, metrics_frame
from dolly_spark.tracking import experiments, lineage, metrics, runs


@dataclass
class DemoConfig:
    output_root: str | None = None
    experiment: str | None = None
    steps: int = 3
    nested: dict = field(default_factory=lambda: {"a": 1, "b": {"c": "x"}})
    long_text: str = "y" * 7000


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlroot")


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_resolve_tracking_local_databricks_and_env(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow_store.resolve_tracking(tmp_path) == (uri, uri)
    with pytest.raises(ValueError, match="--output-root"):
        mlflow_store.resolve_tracking(None)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert mlflow_store.resolve_tracking(tmp_path, "main") == ("databricks", "databricks-uc")
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert mlflow_store.resolve_tracking(tmp_path) == ("sqlite:////elsewhere/x.db", "sqlite:////elsewhere/x.db")


def test_switching_roots_in_one_process_and_user_override_sticks(tmp_path, monkeypatch):
    import mlflow

    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; that must not pin later jobs to it.
    for name in ("a", "b"):
        experiments.configure(tmp_path / name)
        assert mlflow.get_tracking_uri() == f"sqlite:///{(tmp_path / name).resolve()}/mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path.resolve()}/other.db")  # as another job might
    experiments.configure(tmp_path / "a")
    assert mlflow.get_tracking_uri() == f"sqlite:///{(tmp_path / 'a').resolve()}/mlflow.db"
    # A user's MLFLOW_TRACKING_URI wins over every root, and keeps winning.
    user = f"sqlite:///{tmp_path.resolve()}/user.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
    for _ in range(2):
        experiments.configure(tmp_path / "a", experiment="exp_a")
        assert mlflow.get_tracking_uri() == user
    # One store, two roots: an experiment keeps its artifacts under the root it was made for.
    with pytest.raises(PathOutsideRootError, match="exp_a"):
        experiments.configure(tmp_path / "b", experiment="exp_a")


def test_flatten_params_nests_and_truncates_to_mlflow_limits():
    flat = runs.flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "s": "z" * 7000, "n": None, "e": {}})
    assert flat["a.b"] == "1" and flat["a.c.d"] == "[1, 2]" and flat["n"] == "null" and flat["e"] == "{}"
    assert len(flat["s"]) == runs.MAX_PARAM_VALUE and flat["s"].endswith("...")


def test_metrics_from_rows_latest_row_per_stage_wins():
    rows = [
        {
            "stage": "silver",
            "input_rows": 10,
            "output_rows": 8,
            "quarantined_rows": 2,
            "removed_rows": 0,
            "details": '{"quarantined_by_reason": {"empty response": 2}}',
            "created_at": 1,
        },
        {
            "stage": "silver",
            "input_rows": 12,
            "output_rows": 9,
            "quarantined_rows": 3,
            "removed_rows": 0,
            "details": '{"quarantined_by_reason": {"empty response": 3}, "note": "x", "kept": 5}',
            "created_at": 2,
        },
        {
            "stage": "bronze",
            "input_rows": 12,
            "output_rows": 12,
            "quarantined_rows": 0,
            "removed_rows": 0,
            "details": "{}",
            "created_at": 1,
        },
    ]
    m = metrics.metrics_from_rows(rows)
    assert m == {
        "silver.input_rows": 12,
        "silver.output_rows": 9,
        "silver.quarantined_rows": 3,
        "silver.removed_rows": 0,
        "silver.quarantined.empty response": 3,
        "silver.kept": 5,
        "bronze.input_rows": 12,
        "bronze.output_rows": 12,
        "bronze.quarantined_rows": 0,
        "bronze.removed_rows": 0,
    }


def test_job_run_logs_config_git_engine_and_nests(root):
    cfg = DemoConfig(output_root=str(root))
    with runs.job_run("pipeline", cfg, engine="sail") as parent:
        with runs.job_run("prepare", cfg) as child:
            pass
    pid, cid = parent.info.run_id, child.info.run_id
    p, c = client().get_run(pid), client().get_run(cid)
    assert c.data.tags["mlflow.parentRunId"] == pid
    assert c.data.tags[runs.TAG_JOB] == "prepare" and p.data.tags[runs.TAG_JOB] == "pipeline"
    assert p.data.tags[runs.TAG_ENGINE] == "sail" and c.data.tags[runs.TAG_ENGINE] == "sail"
    assert p.data.params["steps"] == "3" and p.data.params["nested.b.c"] == "x"
    assert len(p.data.params["long_text"]) == runs.MAX_PARAM_VALUE
    commit = runs.git_commit()
    assert commit is None or p.data.tags[runs.TAG_GIT_COMMIT] == commit == p.data.tags["mlflow.source.git.commit"]
    import mlflow
    import yaml

    logged = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"runs:/{pid}/config.yaml")).read_text())
    assert logged["long_text"] == cfg.long_text and logged["nested"] == {"a": 1, "b": {"c": "x"}}
    # Artifacts land under the root, never in the working directory.
    assert list((root / "mlartifacts").rglob("config.yaml"))
    assert p.info.status == "FINISHED"


def test_subprocess_style_nesting_via_env_and_failed_status(root, monkeypatch):
    cfg = DemoConfig(output_root=str(root))
    with runs.job_run("pipeline", cfg) as parent:
        pass
    # A child process has no active run, only the parent id in its environment.
    monkeypatch.setenv(runs.PARENT_RUN_ENV, parent.info.run_id)
    with pytest.raises(RuntimeError, match="boom"):
        with runs.job_run("train", cfg, experiment="another_name") as child:
            raise RuntimeError("boom")
    run = client().get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.experiment_id == parent.info.experiment_id
    assert run.info.status == "FAILED"


def test_stale_parent_env_starts_a_top_level_run(root, monkeypatch):
    monkeypatch.setenv(runs.PARENT_RUN_ENV, "f" * 32)
    with runs.job_run("score", DemoConfig(output_root=str(root))) as run:
        pass
    assert "mlflow.parentRunId" not in client().get_run(run.info.run_id).data.tags


def test_non_zero_rank_logs_nothing(root, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with runs.job_run("train", DemoConfig(output_root=str(root))) as run:
        assert run is None


def test_experiment_with_artifacts_outside_root_is_refused(root, tmp_path):
    import mlflow

    experiments.configure(root)
    mlflow.create_experiment("stray", artifact_location=(tmp_path / "elsewhere").as_uri())
    with pytest.raises(PathOutsideRootError, match="stray"):
        experiments.ensure_experiment("stray", mlflow_store.local_artifact_root(root))


def test_git_commit_outside_git_is_none(tmp_path):
    assert runs.git_commit(tmp_path) is None


def test_metrics_table_and_report_artifacts(spark, root, tmp_path):
    names = tables.TableNames(root=str(tmp_path / "lake"))
    old = metrics_frame(spark, "run-a", [StageCount("bronze", 5, 5)])
    tables.write_table(spark, old, names.metrics, mode="append")
    new = metrics_frame(
        spark,
        "run-b",
        [
            StageCount("bronze", 7, 7),
            StageCount("silver", 7, 6, 1, details={"quarantined_by_reason": {"empty_response": 1}}),
        ],
    )
    tables.write_table(spark, new, names.metrics, mode="append")
    report = tmp_path / "report"
    (report / "plots").mkdir(parents=True)
    (report / "plots" / "lengths.png").write_bytes(b"\x89PNG fake")
    (report / "report.md").write_text("# gold\n")
    with runs.job_run("prepare", DemoConfig(output_root=str(root))) as run:
        logged = metrics.log_metrics_table(spark, names)
        only_a = metrics.log_metrics_table(spark, names, run_id_filter="run-a")
        files = metrics.log_dir_artifacts(report, "report")
        with pytest.raises(FileNotFoundError):
            metrics.log_dir_artifacts(tmp_path / "missing", "report")
    assert logged["bronze.input_rows"] == 7 and logged["silver.quarantined.empty_response"] == 1
    assert only_a == {
        "bronze.input_rows": 5,
        "bronze.output_rows": 5,
        "bronze.quarantined_rows": 0,
        "bronze.removed_rows": 0,
    }
    run_metrics = client().get_run(run.info.run_id).data.metrics
    assert run_metrics["silver.output_rows"] == 6 and run_metrics["silver.quarantined_rows"] == 1
    assert files == ["plots/lengths.png", "report.md"]
    names_logged = {a.path for a in client().list_artifacts(run.info.run_id, "report")}
    assert names_logged == {"report/plots", "report/report.md"}


def write_gold_like(spark, names):
    """Two commits, so the lineage must name version 1, not 0."""
    rows = [("r1", "open_qa", "train", "q1", "a1"), ("r2", "summarization", "eval", "q2", "a2")]
    ddl = "record_id string, category string, split string, instruction string, response string"
    tables.write_table(spark, spark.createDataFrame(rows[:1], ddl), names.gold)
    return tables.write_table(spark, spark.createDataFrame(rows, ddl), names.gold)


@pytest.mark.parametrize("with_spark", [True, False])
def test_gold_lineage_matches_delta_history(spark, root, tmp_path, with_spark):
    names = tables.TableNames(root=str(tmp_path / "lake"))
    version = write_gold_like(spark, names)
    history_latest = max(h["version"] for h in tables.table_history(names.gold))
    assert version == tables.table_version(spark, names.gold) == history_latest == 1
    with runs.job_run("train", DemoConfig(output_root=str(root))) as run:
        tags = lineage.log_gold_lineage(
            spark if with_spark else None, names.gold, version, silver_version=3, bronze_version=2
        )
    r = client().get_run(run.info.run_id)
    assert r.data.tags[lineage.TAG_GOLD_TABLE] == names.gold.path
    assert r.data.tags[lineage.TAG_GOLD_VERSION] == str(history_latest)
    assert (r.data.tags[lineage.TAG_SILVER_VERSION], r.data.tags[lineage.TAG_BRONZE_VERSION]) == ("3", "2")
    assert set(tags) == set(lineage.GOLD_TAGS)  # one tag per fact: the bronze version is not logged twice
    assert lineage.run_lineage(run.info.run_id) == tags
    (inp,) = r.inputs.dataset_inputs
    assert inp.dataset.name == "gold@v1" and inp.dataset.source_type == "delta_table"
    import json

    source = json.loads(inp.dataset.source)
    assert source == {"path": names.gold.path, "delta_table_version": 1}
    assert json.loads(inp.dataset.profile) == {"num_rows": 2}
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    schema_cols = [c["name"] for c in json.loads(inp.dataset.schema)["mlflow_colspec"]]
    assert schema_cols == ["record_id", "category", "split", "instruction", "response"]


def test_lineage_tags_leave_out_versions_not_given(tmp_path):
    tags = lineage.lineage_tags(tmp_path / "gold", 0)
    assert tags == {
        lineage.TAG_GOLD_TABLE: str((tmp_path / "gold").resolve()),
        lineage.TAG_GOLD_TABLE_NAME: "gold",
        lineage.TAG_GOLD_VERSION: "0",
    }
    assert lineage.lineage_tags("main.dolly.gold", 4, bronze_version=1)[lineage.TAG_BRONZE_VERSION] == "1"


def test_the_train_job_finds_the_bronze_version_behind_gold(spark, tmp_path):
    from dolly_spark.commands.train import upstream_versions

    names = tables.TableNames(root=str(tmp_path / "lake"))
    versions = {"bronze": 1, "silver": 2, "gold": 3}
    counts = [StageCount("gold", 4, 4, details={"versions": versions})]
    tables.write_table(spark, metrics_frame(spark, "run-a", counts), names.metrics, mode="append")
    assert upstream_versions(spark, names, 3) == {"bronze_version": 1}  # one key: lineage_tags takes it
    assert upstream_versions(spark, names, 9) == {}


def test_lineage_needs_an_active_run(tmp_path):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        lineage.log_gold_lineage(None, tmp_path / "gold", 0)
