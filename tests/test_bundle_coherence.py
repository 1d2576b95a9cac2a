"""bundle_check's coherence checks (tools/bundle_coherence.py): the real bundle passes, and a
broken copy fails each check, naming what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dolly_spark.commands.train import set_task_value
from dolly_spark.train.config import GPU_FAMILIES, TrainConfig
from dolly_spark.train.hardware import DS_CONFIG_FILES, family_from_device_name, load_ds_config, precision_flags
from tests.shared_data import SHARED
from tests.test_bundles import _pipeline_task
from tools import bundle_check as bc
from tools.bundle_coherence import coherence_problems, setup_extra_pins, supported_spark_versions

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles"
SCHEMA = SHARED / "databricks-bundle-schema" / "jsonschema.json"


_task = _pipeline_task


def _problems(root: Path, check: str) -> list[str]:
    return [str(p) for p in coherence_problems(bc.load_bundle(root)) if p.check == check]


def test_real_bundle_is_coherent_and_passes_the_whole_check():
    assert coherence_problems(bc.load_bundle(BUNDLE)) == []
    assert bc.check_bundle(BUNDLE, SCHEMA, REPO / "setup.py", None) == []


def test_supported_rows_name_both_runtime_keys_and_the_bundle_defaults_to_18_lts():
    keys = supported_spark_versions()
    assert keys["17.3.x-gpu-ml-scala2.13"] == "dbr-17.3-lts-ml-gpu.txt"
    assert keys["18.0.x-gpu-ml-scala2.13"] == "dbr-18-lts-ml-gpu.txt"
    variables = yaml.safe_load((BUNDLE / "databricks.yml").read_text())["variables"]
    assert variables["gpu_spark_version"]["default"] == "18.0.x-gpu-ml-scala2.13"


def test_unsupported_spark_version_is_rejected(broken):
    root = broken(
        "databricks.yml", lambda d: d["variables"]["gpu_spark_version"].update(default="16.4.x-gpu-ml-scala2.12")
    )
    msgs = _problems(root, "runtimes")
    assert msgs and all("16.4.x-gpu-ml-scala2.12" in m for m in msgs)


def test_multi_node_cluster_without_num_nodes_is_rejected_and_passing_it_fixes_it(broken):
    root = broken("databricks.yml", lambda d: d["variables"]["gpu_workers"].update(default=2))
    msgs = _problems(root, "train_shape")
    assert msgs and "2 worker(s)" in msgs[0] and "--num-nodes 2" in msgs[0]
    broken(
        "resources/dolly_pipeline.yml",
        lambda d: _task(d, "train")["python_wheel_task"]["parameters"].extend(["--num-nodes", "${var.gpu_workers}"]),
    )
    assert _problems(root, "train_shape") == []


def test_num_nodes_on_a_single_node_cluster_is_rejected(broken):
    root = broken(
        "resources/dolly_pipeline.yml",
        lambda d: _task(d, "train")["python_wheel_task"]["parameters"].extend(["--num-nodes", "4"]),
    )
    msgs = _problems(root, "train_shape")
    assert msgs and "single node" in msgs[0]


def test_offered_gpu_family_the_parser_rejects_is_caught(broken):
    root = broken(
        "databricks.yml", lambda d: d["variables"]["gpu_family"].update(description="GPU family (a100, t4, b200)")
    )
    msgs = _problems(root, "descriptions")
    assert len(msgs) == 1 and "['b200']" in msgs[0]


def test_num_gpus_described_as_a_total_is_caught(broken):
    root = broken("databricks.yml", lambda d: d["variables"]["num_gpus"].update(description="total GPUs"))
    assert any("per node" in m for m in _problems(root, "descriptions"))


def test_register_without_this_job_runs_run_id_is_rejected(broken):
    def drop_run_id(d):
        params = _task(d, "register")["python_wheel_task"]["parameters"]
        i = params.index("--run-id")
        del params[i : i + 2]

    root = broken("resources/dolly_pipeline.yml", drop_run_id)
    assert any("register must register the run this job run trained" in m for m in _problems(root, "register"))


def test_register_reading_a_task_that_is_not_upstream_train_is_rejected(broken):
    def other_task(d):
        params = _task(d, "register")["python_wheel_task"]["parameters"]
        params[params.index("--run-id") + 1] = "{{tasks.report.values.run_id}}"

    root = broken("resources/dolly_pipeline.yml", other_task)
    assert _problems(root, "register")


def test_bundle_without_its_schema_resource_is_rejected(broken):
    (broken.root / "resources" / "schema.yml").unlink()
    msgs = _problems(broken.root, "resources")
    assert any("schema resource" in m for m in msgs)


def test_volume_in_another_schema_is_rejected(broken):
    root = broken(
        "resources/volume.yml", lambda d: d["resources"]["volumes"]["dolly_files"].update(schema_name="other")
    )
    assert any("volume resource" in m for m in _problems(root, "resources"))


def test_score_without_a_shared_download_dir_is_rejected(broken):
    def drop(d):
        params = _task(d, "score")["python_wheel_task"]["parameters"]
        i = params.index("--download-dir")
        del params[i : i + 2]

    root = broken("resources/dolly_pipeline.yml", drop)
    msgs = _problems(root, "downloads")
    assert len(msgs) == 1 and "dolly-score must pass --download-dir" in msgs[0]


LORA = "resources/dolly_lora.yml"


def _lora_task(data: dict, key: str) -> dict:
    return next(t for t in data["resources"]["jobs"]["dolly_lora"]["tasks"] if t["task_key"] == key)


def _set_flag(params: list, flag: str, value: str) -> None:
    params[params.index(flag) + 1] = value


def test_the_lora_job_trains_pythia_12b_on_one_gpu_with_peft_pinned_as_tested():
    bundle = bc.load_bundle(BUNDLE)
    job = next(j for j in bundle.jobs() if j.key == "dolly_lora")
    tasks = {t["task_key"]: t for t in job.spec["tasks"]}
    params = tasks["train"]["python_wheel_task"]["parameters"]
    values = bundle.variable_sets()["prod"]
    assert params[params.index("--method") + 1] == "lora" and params[params.index("--num-gpus") + 1] == "1"
    assert bc.resolve(params[params.index("--base-model") + 1], values) == "EleutherAI/pythia-12b"
    assert bc.resolve(params[params.index("--gpu-family") + 1], values) in ("a100", "h100")
    cluster = {c["job_cluster_key"]: c["new_cluster"] for c in job.spec["job_clusters"]}["gpu_lora_cluster"]
    assert cluster["num_workers"] == 0 and "--num-nodes" not in params  # one node: the driver's GPU
    pypi = [lib["pypi"]["package"] for lib in tasks["train"]["libraries"] if "pypi" in lib]
    assert pypi == [f"peft=={setup_extra_pins(REPO / 'setup.py')['peft']}"]
    # Its own registered name: the LoRA job never moves dolly_pipeline's alias.
    register = tasks["register"]["python_wheel_task"]["parameters"]
    assert register[register.index("--model-name") + 1] == "${var.catalog}.${var.schema}.${var.lora_model_name}"
    assert values["lora_model_name"] != values["model_name"]


def _drop_pypi(task: dict) -> None:
    task["libraries"][:] = [lib for lib in task["libraries"] if "pypi" not in lib]


def test_a_lora_train_task_without_peft_is_rejected_and_a_wrong_pin_too(broken):
    root = broken(LORA, lambda d: _drop_pypi(_lora_task(d, "train")))
    msgs = _problems(root, "methods")
    assert msgs and all("--method lora needs peft" in m for m in msgs), msgs
    broken(LORA, lambda d: _lora_task(d, "train")["libraries"].append({"pypi": {"package": "peft==0.1.0"}}))
    msgs = _problems(root, "methods")
    assert msgs and all("peft==0.1.0 differs from the tested pin" in m for m in msgs), msgs


def test_qlora_also_needs_bitsandbytes(broken):
    root = broken(
        LORA, lambda d: _set_flag(_lora_task(d, "train")["python_wheel_task"]["parameters"], "--method", "qlora")
    )
    msgs = _problems(root, "methods")
    assert msgs and all("--method qlora needs bitsandbytes" in m for m in msgs), msgs


def test_adapter_only_models_need_peft_where_they_are_loaded(broken):
    root = broken(
        LORA, lambda d: _lora_task(d, "train")["python_wheel_task"]["parameters"].append("--log-adapter-only")
    )
    msgs = _problems(root, "methods")
    assert {m.split(": ")[1] for m in msgs} == {
        "resources.jobs.dolly_lora.tasks[3].libraries",  # evaluate
        "resources.jobs.dolly_lora.tasks[4].libraries",  # score
    }
    assert all("an adapter-only model needs peft" in m for m in msgs)

    def add_peft(d):
        for key in ("evaluate", "score"):
            _lora_task(d, key)["libraries"].append(_lora_task(d, "train")["libraries"][-1])

    broken(LORA, add_peft)
    assert _problems(root, "methods") == []


@pytest.mark.parametrize("family", [f for f in GPU_FAMILIES if f != "auto"])
def test_every_offered_family_parses_and_has_a_config(family):
    cfg = TrainConfig(gpu_family=family, output_root="x")
    assert cfg.batch_size_for(family) >= 1
    flags = precision_flags(load_ds_config(family))
    if family in ("t4", "v100"):  # no bf16 on these cards
        assert flags == {"bf16": False, "fp16": True}
    elif family != "cpu":
        assert flags == {"bf16": True, "fp16": False}
    assert family in DS_CONFIG_FILES


def test_t4_trains_in_fp16_and_ada_cards_are_detected():
    assert precision_flags(load_ds_config("t4")) == {"bf16": False, "fp16": True}
    assert family_from_device_name("NVIDIA L40S") == "l40s"
    assert family_from_device_name("NVIDIA L4") == "l4"


def test_task_value_is_set_only_on_databricks(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert set_task_value("run_id", "abc") is False


# --- Model Serving ----------------------------------------------------------------------------

SERVING = "resources/dolly_serving.yml"


def _endpoint(d: dict) -> dict:
    return d["resources"]["model_serving_endpoints"]["dolly_endpoint"]


def _entity(d: dict) -> dict:
    return _endpoint(d)["config"]["served_entities"][0]


def test_a_bundle_without_the_serving_endpoint_is_rejected(broken):
    (broken.root / SERVING).unlink()
    (broken.root / "resources" / "placeholder.yml").write_text("resources: {}\n")  # keep the include matching
    assert any(
        "no serving endpoint serves a model the register tasks register" in m for m in _problems(broken.root, "serving")
    )


def test_a_cpu_workload_in_one_target_is_rejected_naming_the_target(broken):
    root = broken("databricks.yml", lambda d: d["targets"]["dev"]["variables"].update(serving_workload_type="CPU"))
    msgs = _problems(root, "serving")
    assert len(msgs) == 1 and "target dev: 'CPU' is not a GPU workload type" in msgs[0]


def test_a_hard_coded_workload_and_no_scale_to_zero_are_rejected(broken):
    root = broken(SERVING, lambda d: _entity(d).update(workload_size="Small", scale_to_zero_enabled=False))
    msgs = _problems(root, "serving")
    assert any("workload_size: take it from a variable" in m for m in msgs)
    assert any("scale_to_zero_enabled: must be true" in m for m in msgs)


def test_an_inference_table_outside_the_bundle_schema_or_disabled_is_rejected(broken):
    table = lambda d: _endpoint(d)["ai_gateway"]["inference_table_config"]  # noqa: E731
    root = broken(SERVING, lambda d: table(d).update(schema_name="elsewhere"))
    assert any("put it in the bundle's schema" in m for m in _problems(root, "serving"))
    broken(SERVING, lambda d: table(d).update(schema_name="${var.schema}", enabled=False))
    assert any("enable the inference table" in m for m in _problems(root, "serving"))


def test_traffic_to_an_unknown_entity_or_not_summing_to_100_is_rejected(broken):
    def routes(d):
        _endpoint(d)["config"]["traffic_config"]["routes"] = [{"served_entity_name": "gone", "traffic_percentage": 50}]

    msgs = _problems(broken(SERVING, routes), "serving")
    assert any("route to 'gone', not a served entity" in m for m in msgs)
    assert any("traffic adds up to 50%" in m for m in msgs)


def test_a_register_of_a_served_model_without_an_endpoint_task_is_rejected(broken):
    def drop(d):
        tasks = d["resources"]["jobs"]["dolly_pipeline"]["tasks"]
        tasks[:] = [t for t in tasks if t["task_key"] != "endpoint"]

    msgs = _problems(broken("resources/dolly_pipeline.yml", drop), "serving")
    assert len(msgs) == 1 and "add a dolly-endpoint task after it" in msgs[0]


def test_an_endpoint_task_not_after_register_or_with_other_flags_is_rejected(broken):
    def ungated(d):
        task = _task(d, "endpoint")
        task["depends_on"] = [{"task_key": "train"}]
        params = task["python_wheel_task"]["parameters"]
        params[params.index("--alias") + 1] = "candidate"
        params[params.index("--name") + 1] = "some-other-endpoint"

    msgs = _problems(broken("resources/dolly_pipeline.yml", ungated), "serving")
    assert any("no upstream register task: the endpoint would move ungated" in m for m in msgs)
    assert any("run it after register task 'register'" in m for m in msgs)
    assert any("--alias 'candidate' differs from the register task's '${var.model_alias}'" in m for m in msgs)
    assert any("--name 'some-other-endpoint' is not the endpoint" in m for m in msgs)


def test_the_endpoint_task_parameters_parse_with_the_real_endpoint_parser():
    bundle = bc.load_bundle(BUNDLE)
    problems = [p for p in bc.parameter_problems(bundle, REPO / "setup.py") if "dolly-endpoint" in p.message]
    assert problems == []


PIPELINE = "resources/dolly_pipeline.yml"


def test_a_prepare_task_without_the_pii_detectors_is_rejected_unless_the_scan_is_off(broken):
    root = broken(PIPELINE, lambda d: _drop_pypi(_task(d, "prepare")))
    msgs = _problems(root, "governance")
    assert len(msgs) == 2 and all("the PII/secrets scan needs" in m for m in msgs), msgs
    assert any("presidio-analyzer==2.2.366" in m for m in msgs) and any("detect-secrets==1.5.0" in m for m in msgs)
    broken(PIPELINE, lambda d: _task(d, "prepare")["python_wheel_task"]["parameters"].append("--no-pii-scan"))
    assert _problems(root, "governance") == []


def test_a_prepare_task_with_another_detector_pin_is_rejected(broken):
    def repin(d):
        for lib in _task(d, "prepare")["libraries"]:
            if "pypi" in lib and lib["pypi"]["package"].startswith("detect-secrets"):
                lib["pypi"]["package"] = "detect-secrets==1.4.0"

    msgs = _problems(broken(PIPELINE, repin), "governance")
    assert msgs == [m for m in msgs if "detect-secrets==1.4.0 differs from the tested pin detect-secrets==1.5.0" in m]
    assert len(msgs) == 1
