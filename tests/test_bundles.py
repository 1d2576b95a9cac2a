"""The Databricks Asset Bundle (bundles/) against the official schema and the real job parsers.

Broken copies are generated from the real files in tmp_path, so they cannot drift from them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from dolly_spark.commands import cli
from tests.shared_data import SHARED
from tools import bundle_check as bc

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles"
SETUP_PY = REPO / "setup.py"
SCHEMA = SHARED / "databricks-bundle-schema" / "jsonschema.json"
VOLUME = "/Volumes/${var.catalog}/${var.schema}/${var.volume}/"


@pytest.fixture(scope="module")
def bundle() -> bc.Bundle:
    return bc.load_bundle(BUNDLE)


def _jobs(bundle: bc.Bundle) -> dict[str, dict]:
    return {j.key: j.spec for j in bundle.jobs()}


def _tasks(job: dict) -> dict[str, dict]:
    return {t["task_key"]: t for t in job["tasks"]}


def _params(task: dict) -> dict[str, str]:
    """``--flag value`` pairs of a wheel task (flags without a value map to None)."""
    argv = task["python_wheel_task"]["parameters"]
    out, i = {}, 0
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[argv[i]] = argv[i + 1]
            i += 2
        else:
            out[argv[i]] = None
            i += 1
    return out


def _cluster(job: dict, task: dict) -> dict:
    return {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}[task["job_cluster_key"]]


# --- the real bundle ------------------------------------------------------------------------


def test_every_bundle_file_validates_against_the_official_schema(bundle):
    assert SCHEMA.exists(), f"bundle schema missing: {SCHEMA}"
    names = sorted(bundle.rel(f.path) for f in bundle.files)
    assert names == [
        "bundles/databricks.yml",
        "bundles/resources/dolly_lora.yml",
        "bundles/resources/dolly_pipeline.yml",
        "bundles/resources/dolly_score.yml",
        "bundles/resources/dolly_serving.yml",
        "bundles/resources/schema.yml",
        "bundles/resources/volume.yml",
    ]
    problems = bc.schema_problems(bundle, SCHEMA)
    assert problems == [], "\n".join(map(str, problems))


def test_targets_dev_is_default_development_and_prod_is_production_with_root_path_and_permissions(bundle):
    targets = {name: spec for name, (_, spec) in bundle.targets().items()}
    assert set(targets) == {"dev", "prod"}
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert "${workspace.current_user.short_name}" in targets["dev"]["variables"]["schema"]  # schema per user
    assert targets["prod"]["mode"] == "production" and "default" not in targets["prod"]
    assert targets["prod"]["workspace"]["root_path"].startswith("/Workspace/")
    assert {p["level"] for p in targets["prod"]["permissions"]} >= {"CAN_MANAGE"}
    assert bc.target_problems(bundle) == []


def test_bundle_declares_the_issue_variables_and_uses_only_declared_ones(bundle):
    assert bundle.main.data["bundle"]["name"] == "dolly_spark"
    assert bundle.main.data["include"] == ["resources/*.yml"]
    assert set(bundle.variables()) >= {"catalog", "schema", "volume", "base_model", "node_type_id", "num_gpus"}
    assert bc.variable_problems(bundle) == []


def test_every_wheel_task_entry_point_is_a_console_script_of_setup_py(bundle):
    scripts = bc.console_scripts(SETUP_PY)
    used = {t["python_wheel_task"]["entry_point"] for job in _jobs(bundle).values() for t in job["tasks"]}
    assert used == {
        "dolly-prepare",
        "dolly-report",
        "dolly-train",
        "dolly-register",
        "dolly-endpoint",
        "dolly-evaluate",
        "dolly-score",
    }
    assert used <= set(scripts)
    for job in _jobs(bundle).values():
        for task in job["tasks"]:
            assert task["python_wheel_task"]["package_name"] == bc.package_name(SETUP_PY) == "dolly_spark"
    assert bc.entry_point_problems(bundle, SETUP_PY) == []


@pytest.fixture(scope="module")
def real_parameter_problems(bundle) -> list[bc.Problem]:
    return bc.parameter_problems(bundle, SETUP_PY)


@pytest.mark.parametrize(
    "entry_point",
    [
        "dolly-prepare",
        "dolly-report",
        "dolly-train",
        "dolly-register",
        "dolly-endpoint",
        "dolly-evaluate",
        "dolly-score",
    ],
)
def test_task_parameters_are_accepted_by_the_real_parser(real_parameter_problems, entry_point):
    # Modules not written yet fail here with "cannot build the argument parser ... ModuleNotFoundError".
    problems = [p for p in real_parameter_problems if entry_point in p.message]
    assert problems == [], "\n".join(map(str, problems))


def test_parse_error_accepts_known_flags_and_rejects_unknown_ones():
    parser = cli.parser_for("prepare")
    assert bc.parse_error(parser, ["--catalog", "main", "--schema", "dolly"]) is None
    assert "unrecognized arguments: --no-such-flag" in bc.parse_error(parser, ["--no-such-flag", "x"])
    assert "invalid choice" in bc.parse_error(parser, ["--until", "no_such_stage"])
    assert bc.parse_error(parser, ["--help"]) == "exits before running (a help/version flag?)"


def test_depends_on_forms_the_expected_dag(bundle):
    assert bc.dag_problems(bundle) == []
    edges = {
        key: [d["task_key"] for d in t.get("depends_on", [])]
        for key, t in _tasks(_jobs(bundle)["dolly_pipeline"]).items()
    }
    assert edges == {
        "prepare": [],
        "report": ["prepare"],
        "train": ["prepare"],
        "register": ["train"],
        "endpoint": ["register"],
        "evaluate": ["register"],
        "score": ["evaluate"],
    }
    assert list(_tasks(_jobs(bundle)["dolly_score"])) == ["score"]


def test_train_and_score_run_on_dedicated_gpu_clusters_and_prepare_on_cpu(bundle):
    jobs = _jobs(bundle)
    pipeline = jobs["dolly_pipeline"]
    gpu_tasks = [
        (pipeline, _tasks(pipeline)["train"]),
        (pipeline, _tasks(pipeline)["score"]),
        (jobs["dolly_score"], _tasks(jobs["dolly_score"])["score"]),
    ]
    for job, task in gpu_tasks:
        cluster = _cluster(job, task)
        assert cluster["spark_version"] == "${var.gpu_spark_version}"
        assert cluster["node_type_id"] == "${var.node_type_id}"
        assert cluster["data_security_mode"] == "SINGLE_USER"
        assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"  # a string, as the API wants
    assert "gpu-ml" in bundle.variables()["gpu_spark_version"]
    assert _tasks(pipeline)["train"]["job_cluster_key"] != _tasks(pipeline)["score"]["job_cluster_key"]
    prepare_cluster = _cluster(pipeline, _tasks(pipeline)["prepare"])
    assert "gpu" not in bc.resolve(prepare_cluster["spark_version"], bundle.variables())
    assert bc.cluster_problems(bundle) == []


def test_tasks_pass_tables_alias_and_volume_paths_through_parameters(bundle):
    jobs = _jobs(bundle)
    tasks = _tasks(jobs["dolly_pipeline"])
    for job in jobs.values():
        for task in job["tasks"]:
            p = _params(task)
            if task["python_wheel_task"]["entry_point"] == "dolly-endpoint":  # the UC model's full name
                assert p["--model-name"] == "${var.catalog}.${var.schema}.${var.model_name}"
                continue
            assert (p["--catalog"], p["--schema"]) == ("${var.catalog}", "${var.schema}"), task["task_key"]
    train = _params(tasks["train"])
    assert train["--staging-dir"] == VOLUME + "staging"
    # Per job run, so a task retry with --resume continues this run and never a previous one.
    assert train["--checkpoint-dir"] == VOLUME + "checkpoints/{{job.run_id}}"
    assert "--resume" in train and tasks["train"]["max_retries"] >= 1
    assert train["--num-gpus"] == "${var.num_gpus}" and train["--base-model"] == "${var.base_model}"
    assert _params(tasks["register"])["--alias"] == "${var.model_alias}"
    uri = "models:/${var.catalog}.${var.schema}.${var.model_name}@${var.model_alias}"
    assert _params(tasks["evaluate"])["--model-uri"] == uri
    assert _params(tasks["score"])["--model-uri"] == uri
    assert _params(_tasks(jobs["dolly_score"])["score"])["--model-uri"] == uri
    assert bundle.variables()["model_alias"] == "champion"
    volume = bundle.files[-1].data["resources"]["volumes"]["dolly_files"]
    assert (volume["catalog_name"], volume["schema_name"], volume["name"]) == (
        "${var.catalog}",
        "${resources.schemas.dolly_schema.name}",  # the declared schema: deploy creates it first
        "${var.volume}",
    )


def test_score_job_is_scheduled_and_its_tables_are_job_parameters(bundle):
    job = _jobs(bundle)["dolly_score"]
    assert job["schedule"]["quartz_cron_expression"] and job["schedule"]["timezone_id"]
    p = _params(_tasks(job)["score"])
    assert p["--input-table"] == "{{job.parameters.input_table}}"
    assert p["--output-table"] == "{{job.parameters.output_table}}"
    assert _params(_tasks(_jobs(bundle)["dolly_pipeline"])["score"])["--output-table"] == "predictions"
    assert {q["name"] for q in job["parameters"]} >= {"input_table", "output_table"}


def test_wheel_libraries_point_at_the_wheel_the_artifact_builds(bundle):
    ((_, name, artifact),) = bundle.artifacts()
    assert artifact["type"] == "whl"
    assert (BUNDLE / artifact["path"]).resolve() == REPO and (REPO / "setup.py").exists()
    assert bc.find_setup_py(bundle) == SETUP_PY
    assert bc.library_problems(bundle) == []


# --- deliberately broken copies -------------------------------------------------------------


def _pipeline_task(data: dict, key: str) -> dict:
    return next(t for t in data["resources"]["jobs"]["dolly_pipeline"]["tasks"] if t["task_key"] == key)


def _check(root: Path, parser_for=None) -> list[bc.Problem]:
    return bc.check_bundle(root, SCHEMA, SETUP_PY, parser_for)


def _only(problems, check: str) -> list[str]:
    return [str(p) for p in problems if p.check == check]


def test_unmodified_copy_passes_the_structural_checks(broken):
    assert _check(broken.root) == []


def test_unknown_key_in_a_task_is_rejected_by_the_schema_with_file_and_path(broken):
    root = broken("resources/dolly_pipeline.yml", lambda d: _pipeline_task(d, "train").update(retries=3))
    msgs = _only(_check(root), "schema")
    assert msgs == [
        "bundles/resources/dolly_pipeline.yml: resources.jobs.dolly_pipeline.tasks[2]: "
        "Additional properties are not allowed ('retries' was unexpected) [schema]"
    ]


def test_unknown_top_level_key_and_bad_enum_are_rejected(broken):
    def edit(d):
        d["includes"] = d.pop("include")
        d["targets"]["prod"]["permissions"][1]["level"] = "CAN_LOOK"

    msgs = _only(_check(broken("databricks.yml", edit)), "schema")
    assert any(m.startswith("bundles/databricks.yml: includes: unknown top-level key 'includes'") for m in msgs)
    assert any("targets.prod.permissions[1].level: 'CAN_LOOK' is not one of" in m for m in msgs)


def test_missing_entry_point_is_rejected_naming_setup_py(broken):
    def edit(d):
        _pipeline_task(d, "train")["python_wheel_task"]["entry_point"] = "dolly-trian"

    msgs = _only(_check(broken("resources/dolly_pipeline.yml", edit)), "entry_points")
    assert len(msgs) == 1
    assert "tasks[2].python_wheel_task.entry_point: entry point 'dolly-trian' is not a console script in" in msgs[0]
    assert "setup.py" in msgs[0] and "dolly-train" in msgs[0]


def test_cyclic_depends_on_is_rejected_showing_the_cycle(broken):
    def edit(d):
        _pipeline_task(d, "prepare")["depends_on"] = [{"task_key": "score"}]

    msgs = _only(_check(broken("resources/dolly_pipeline.yml", edit)), "dag")
    assert msgs == [
        "bundles/resources/dolly_pipeline.yml: resources.jobs.dolly_pipeline.tasks: depends_on has a "
        "cycle: prepare -> score -> evaluate -> register -> train -> prepare (task -> task it depends on)"
        " [dag]"
    ]


def test_dangling_depends_on_and_cluster_key_are_rejected(broken):
    def edit(d):
        task = _pipeline_task(d, "register")
        task["depends_on"] = [{"task_key": "training"}]
        task["job_cluster_key"] = "cpu"

    msgs = _only(_check(broken("resources/dolly_pipeline.yml", edit)), "dag")
    assert any("depends on 'training', which is not a task of job dolly_pipeline" in m for m in msgs)
    assert any("job_cluster_key 'cpu' is not among job_clusters" in m for m in msgs)


def test_job_key_defined_in_two_files_is_rejected(broken):
    shutil.copy(broken.root / "resources" / "dolly_score.yml", broken.root / "resources" / "dolly_score_copy.yml")
    msgs = _only(_check(broken.root), "dag")
    assert msgs == [
        "bundles/resources/dolly_score_copy.yml: resources.jobs.dolly_score: job key 'dolly_score' is "
        "also defined in bundles/resources/dolly_score.yml [dag]"
    ]


def test_invalid_mode_and_production_without_root_path_are_rejected(broken):
    def edit(d):
        d["targets"]["dev"]["mode"] = "staging"
        del d["targets"]["prod"]["workspace"]

    msgs = _only(_check(broken("databricks.yml", edit)), "targets")
    assert sorted(msgs) == [
        "bundles/databricks.yml: targets.dev.mode: mode 'staging' is not one of ['development', 'production'] "
        "(the CLI rejects it) [targets]",
        "bundles/databricks.yml: targets.prod.workspace.root_path: production mode needs workspace.root_path [targets]",
    ]


def test_undeclared_variable_is_rejected(broken):
    def edit(d):
        _pipeline_task(d, "train")["python_wheel_task"]["parameters"][-1] = "${var.experiment_path}"

    msgs = _only(_check(broken("resources/dolly_pipeline.yml", edit)), "variables")
    assert len(msgs) == 1 and "${var.experiment_path} is not declared" in msgs[0]


def test_wheel_path_not_built_by_any_artifact_is_rejected(broken):
    # ../dist relative to resources/ is bundles/dist, but the artifact builds the repo's dist/.
    def edit(d):
        _pipeline_task(d, "prepare")["libraries"] = [{"whl": "../dist/*.whl"}]

    msgs = _only(_check(broken("resources/dolly_pipeline.yml", edit)), "libraries")
    assert len(msgs) == 1
    assert "../dist/*.whl (relative to this file) is dist/*.whl from the bundle root" in msgs[0]


def test_gpu_cluster_in_shared_access_mode_is_rejected(broken):
    def edit(d):
        cluster = d["resources"]["jobs"]["dolly_score"]["job_clusters"][0]["new_cluster"]
        cluster["data_security_mode"] = "USER_ISOLATION"
        del cluster["spark_conf"]

    msgs = _only(_check(broken("resources/dolly_score.yml", edit)), "clusters")
    assert len(msgs) == 2
    assert any("needs dedicated access mode SINGLE_USER, got 'USER_ISOLATION'" in m for m in msgs)
    assert any("without spark.task.resource.gpu.amount" in m for m in msgs)


def test_unknown_flag_is_rejected_by_the_real_prepare_parser(broken):
    def edit(d):
        _pipeline_task(d, "prepare")["python_wheel_task"]["parameters"] += ["--bogus-flag", "1"]

    root = broken("resources/dolly_pipeline.yml", edit)
    msgs = [m for m in _only(_check(root, bc.dolly_parser_for), "parameters") if "dolly-prepare" in m]
    assert msgs and all("unrecognized arguments:" in m and "--bogus-flag 1" in m for m in msgs)


def test_cli_exits_1_with_readable_problems_and_0_on_the_real_bundle(broken, capsys):
    root = broken(
        "resources/dolly_pipeline.yml",
        lambda d: _pipeline_task(d, "prepare").update(depends_on=[{"task_key": "score"}]),
    )
    assert bc.main([str(root), "--schema", str(SCHEMA), "--setup-py", str(SETUP_PY), "--skip-parameters"]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s) in bundle" in err and "depends_on has a cycle: prepare -> score" in err
    assert bc.main([str(BUNDLE), "--schema", str(SCHEMA), "--skip-parameters"]) == 0
    assert "OK (7 files, 3 jobs, 13 tasks, targets ['dev', 'prod'])" in capsys.readouterr().out


# --- the parameter checker itself, with stand-in parsers ------------------------------------


def _stand_in_parser_for(flags_by_module: dict[str, dict[str, dict]]):
    """Checker unit test only: argparse parsers built from a flag table, not the real modules."""

    def parser_for(target: str) -> argparse.ArgumentParser:
        module = target.split(":")[0]
        if module not in flags_by_module:
            raise ModuleNotFoundError(f"No module named {module!r}")
        parser = argparse.ArgumentParser(prog=module)
        for flag, kw in flags_by_module[module].items():
            parser.add_argument(flag, **kw)
        return parser

    return parser_for


def _score_only_flags(**overrides) -> dict[str, dict[str, dict]]:
    flags = {
        f: {}
        for f in (
            "--catalog",
            "--schema",
            "--model-uri",
            "--input-table",
            "--output-table",
            "--experiment",
            "--download-dir",
        )
    }
    flags.update({"--batch-size": {"type": int}, "--max-new-tokens": {"type": int}}, **overrides)
    return {"dolly_spark.commands.score": flags}


def test_stand_in_parsers_resolve_variables_and_job_parameters_per_target():
    # --batch-size {{job.parameters.batch_size}} and "16" must reach an int parser as integers.
    problems = bc.parameter_problems(bc.load_bundle(BUNDLE), SETUP_PY, _stand_in_parser_for(_score_only_flags()))
    score = [p for p in problems if "dolly-score" in p.message]
    assert score == []
    others = {p.message.split(" (")[0] for p in problems if "dolly-score" not in p.message}
    assert others == {
        f"cannot build the argument parser of {ep}"
        for ep in ("dolly-prepare", "dolly-report", "dolly-train", "dolly-register", "dolly-endpoint", "dolly-evaluate")
    }


def test_stand_in_parser_missing_a_flag_or_choice_reports_the_target(broken):
    root = broken("databricks.yml", lambda d: d["targets"]["dev"]["variables"].update(catalog="dev_cat"))
    flags = _score_only_flags(**{"--catalog": {"choices": ["main"]}})
    del flags["dolly_spark.commands.score"]["--max-new-tokens"]
    problems = [
        str(p)
        for p in bc.parameter_problems(bc.load_bundle(root), SETUP_PY, _stand_in_parser_for(flags))
        if "dolly-score" in p.message
    ]
    # Both score tasks: dev fails on the choice first, prod on the missing flag.
    assert any(
        "(target dev): dolly_spark.commands.score: error: argument --catalog: invalid choice: 'dev_cat'" in m
        for m in problems
    )
    assert any(
        "(target prod): dolly_spark.commands.score: error: unrecognized arguments: --max-new-tokens 256" in m
        for m in problems
    )


# --- Model Serving ----------------------------------------------------------------------------


def test_the_serving_endpoint_serves_the_registered_model_on_a_gpu_and_scales_to_zero(bundle):
    (spec,) = [s for _, res in bundle.section("resources") for s in (res.get("model_serving_endpoints") or {}).values()]
    (entity,) = spec["config"]["served_entities"]
    register = _params(_tasks(_jobs(bundle)["dolly_pipeline"])["register"])
    assert entity["entity_name"] == register["--model-name"]
    values = bundle.variable_sets()
    assert {bc.resolve(entity["workload_type"], v) for v in values.values()} == {"GPU_MEDIUM"}
    assert entity["workload_size"] == "${var.serving_workload_size}" and entity["scale_to_zero_enabled"] is True
    table = spec["ai_gateway"]["inference_table_config"]
    assert table["enabled"] is True and table["catalog_name"] == "${var.catalog}"
    assert table["schema_name"] == "${resources.schemas.dolly_schema.name}"


def test_the_endpoint_task_moves_the_endpoint_to_the_alias_register_set(bundle):
    tasks = _tasks(_jobs(bundle)["dolly_pipeline"])
    endpoint, register = _params(tasks["endpoint"]), _params(tasks["register"])
    assert tasks["endpoint"]["python_wheel_task"]["entry_point"] == "dolly-endpoint"
    assert endpoint["--name"] == "${resources.model_serving_endpoints.dolly_endpoint.name}"
    assert (endpoint["--model-name"], endpoint["--alias"]) == (register["--model-name"], register["--alias"])
    assert float(endpoint["--wait-minutes"]) > 0  # a failed rollout fails the task


def test_a_literal_workload_type_outside_the_schema_enum_is_rejected(broken):
    def cpu(d):
        d["resources"]["model_serving_endpoints"]["dolly_endpoint"]["config"]["served_entities"][0]["workload_type"] = (
            "GPU_HUGE"
        )

    root = broken("resources/dolly_serving.yml", cpu)
    msgs = _only(_check(root), "schema")
    assert any("served_entities[0].workload_type" in m and "GPU_HUGE" in m for m in msgs), msgs
