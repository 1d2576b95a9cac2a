"""Bundle checks that tie the bundle to the code and to the supported runtimes.

- runtimes: every cluster's ``spark_version`` (per target) is a supported row's key, read from
  the ``# spark_version:`` / ``# cpu_spark_version:`` lines of ``runtimes/*.txt``;
- train shape: a train task on a cluster with W workers passes ``--num-nodes W`` (W > 0), and
  none above 1 on a single-node cluster (W = 0: the driver's GPUs);
- gpu families: every family the ``gpu_family`` variable offers is one the train parser takes;
- descriptions: ``num_gpus`` is described as GPUs per node (what ``--num-gpus`` reads);
- register: each register task passes ``--run-id {{tasks.<train>.values.run_id}}`` naming an
  upstream train task (the run this job run produced, set as a task value by ``dolly-train``);
- resources: the bundle declares its schema and its volume, so a deploy needs no manual step;
- downloads: evaluate and score tasks pass ``--download-dir`` on a Volume (executors on worker
  nodes cannot read the driver's temp dirs);
- methods: a train task with ``--method lora|qlora`` lists the packages the method is built on
  (peft; qlora also bitsandbytes) as pypi libraries, pinned to the cluster's runtime row when the
  row pins them, else to setup.py's ``train`` extra; with ``--log-adapter-only`` the evaluate and
  score tasks of the job list peft too (they load the adapter onto its base);
- serving (tools/bundle_serving.py): the Model Serving endpoint serves the registered model on a
  GPU workload from variables, scales to zero, logs to an inference table in the bundle's schema,
  and a ``dolly-endpoint`` task after register moves it with the alias.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tools.bundle_model import (
    Bundle,
    Job,
    Problem,
    _ancestors,
    _clusters,
    _entry,
    _flag,
    _params,
    _setup_call,
    _tasks,
    resolve,
)
from tools.bundle_serving import serving_problems

RUNTIMES_DIR = Path(__file__).resolve().parents[1] / "runtimes"
SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"  # the code the bundle deploys
_KEY_LINE = re.compile(r"^#\s*(spark_version|cpu_spark_version):\s*(\S+)\s*$", re.M)
_RUN_ID_VALUE = re.compile(r"^\{\{\s*tasks\.([A-Za-z0-9_-]+)\.values\.run_id\s*\}\}$")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")
# What each --method needs on the cluster beyond the wheel (the train extra is not installed there).
METHOD_PACKAGES = {"lora": ("peft",), "qlora": ("peft", "bitsandbytes")}
# What prepare's PII/secrets scan imports (prep/detectors.py).
GOVERNANCE_PACKAGES = ("presidio-analyzer", "detect-secrets")
ADAPTER_LOADERS = ("dolly-evaluate", "dolly-score")


def supported_spark_versions(runtimes_dir: Path = RUNTIMES_DIR) -> dict[str, str]:
    """{runtime key: row file name} over every supported row."""
    out = {}
    for path in sorted(runtimes_dir.glob("*.txt")):
        for _, key in _KEY_LINE.findall(path.read_text()):
            out[key] = path.name
    return out


def _cluster_of(job: Job, task: dict) -> dict | None:
    if isinstance(task.get("new_cluster"), dict):
        return task["new_cluster"]
    for c in job.spec.get("job_clusters") or []:
        if isinstance(c, dict) and c.get("job_cluster_key") == task.get("job_cluster_key"):
            return c.get("new_cluster")
    return None


def runtime_problems(bundle: Bundle, runtimes_dir: Path = RUNTIMES_DIR) -> list[Problem]:
    supported = supported_spark_versions(runtimes_dir)
    problems = []
    for job in bundle.jobs():
        for where, spec in _clusters(job):
            for target, values in bundle.variable_sets().items():
                version = resolve(str(spec.get("spark_version", "")), values)
                if version not in supported:
                    problems.append(
                        Problem(
                            bundle.rel(job.file.path),
                            f"{where}.spark_version",
                            f"target {target}: {version!r} is not a supported runtime row "
                            f"(runtimes/*.txt: {sorted(supported)})",
                            "runtimes",
                        )
                    )
    return problems


def train_shape_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            cluster = _cluster_of(job, task)
            if _entry(task) != "dolly-train" or cluster is None:
                continue
            for target, values in bundle.variable_sets().items():
                workers = int(resolve(str(cluster.get("num_workers", 0)), values))
                nodes_flag = _flag(_params(task), "--num-nodes")
                nodes = int(resolve(nodes_flag, values)) if nodes_flag else 1
                expected = max(1, workers)
                if nodes != expected:
                    problems.append(
                        Problem(
                            bundle.rel(job.file.path),
                            f"{job.where}.tasks[{i}].python_wheel_task.parameters",
                            f"target {target}: the train cluster has {workers} worker(s) but the task trains "
                            f"on {nodes} node(s); pass --num-nodes {expected}"
                            + (" (0 workers: single node, the driver's GPUs)" if workers == 0 else ""),
                            "train_shape",
                        )
                    )
    return problems


def variable_description_problems(bundle: Bundle) -> list[Problem]:
    from dolly_spark.train.config import GPU_FAMILIES

    problems = []
    for f, section in bundle.section("variables"):
        for name, spec in section.items():
            desc = str((spec or {}).get("description", "")) if isinstance(spec, dict) else ""
            if name == "gpu_family":
                offered = re.findall(r"\(([^)]*)\)", desc)
                families = [x.strip() for x in ",".join(offered).split(",") if x.strip()]
                rejected = [x for x in families if x not in GPU_FAMILIES]
                if not families or rejected:
                    problems.append(
                        Problem(
                            bundle.rel(f.path),
                            f"variables.{name}.description",
                            f"offers {rejected or 'no families'}; the train parser takes {list(GPU_FAMILIES)}",
                            "descriptions",
                        )
                    )
            if name == "num_gpus" and "per node" not in desc:
                problems.append(
                    Problem(
                        bundle.rel(f.path),
                        f"variables.{name}.description",
                        "--num-gpus is read as GPUs per node; the description must say 'per node'",
                        "descriptions",
                    )
                )
    return problems


def register_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    for job in bundle.jobs():
        entries = {t.get("task_key"): _entry(t) for _, t in _tasks(job)}
        for i, task in _tasks(job):
            if _entry(task) != "dolly-register":
                continue
            run_id = _flag(_params(task), "--run-id") or ""
            m = _RUN_ID_VALUE.match(run_id)
            upstream = m and m.group(1) in _ancestors(job, task.get("task_key"))
            if not (upstream and entries.get(m.group(1)) == "dolly-train"):
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{job.where}.tasks[{i}].python_wheel_task.parameters",
                        f"register must register the run this job run trained: pass --run-id "
                        f"{{{{tasks.<train task>.values.run_id}}}} of an upstream dolly-train task, got {run_id!r}",
                        "register",
                    )
                )
    return problems


def resource_problems(bundle: Bundle) -> list[Problem]:
    schemas = {k: v for _, res in bundle.section("resources") for k, v in (res.get("schemas") or {}).items()}
    volumes = {k: v for _, res in bundle.section("resources") for k, v in (res.get("volumes") or {}).items()}
    problems = []
    if not any(str(s.get("name")) == "${var.schema}" for s in schemas.values()):
        problems.append(
            Problem(
                bundle.rel(bundle.main.path), "resources.schemas", "no schema resource named ${var.schema}", "resources"
            )
        )
    schema_refs = {"${var.schema}"} | {f"${{resources.schemas.{k}.name}}" for k in schemas}
    if not any(
        str(v.get("name")) == "${var.volume}" and str(v.get("schema_name")) in schema_refs for v in volumes.values()
    ):
        problems.append(
            Problem(
                bundle.rel(bundle.main.path),
                "resources.volumes",
                "no volume resource named ${var.volume} in the bundle's schema",
                "resources",
            )
        )
    return problems


def download_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            if _entry(task) not in ("dolly-evaluate", "dolly-score"):
                continue
            where = _flag(_params(task), "--download-dir") or ""
            if not where.startswith("/Volumes/"):
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{job.where}.tasks[{i}].python_wheel_task.parameters",
                        f"{_entry(task)} must pass --download-dir on a Volume (executors cannot read the "
                        f"driver's temp dir), got {where or 'none'}",
                        "downloads",
                    )
                )
    return problems


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = _PIN.match(line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def setup_extra_pins(setup_py: Path, extra: str = "train") -> dict[str, str]:
    """``{package: version}`` pinned in setup.py's ``extras_require[extra]`` (read with ast)."""
    for kw in _setup_call(setup_py).keywords:
        if kw.arg == "extras_require":
            return _pins(ast.literal_eval(kw.value).get(extra, []))
    return {}


def runtime_pins(spark_version: str, runtimes_dir: Path = RUNTIMES_DIR) -> dict[str, str]:
    row = supported_spark_versions(runtimes_dir).get(spark_version)
    return _pins((runtimes_dir / row).read_text().splitlines()) if row else {}


def _pypi_pins(task: dict) -> dict[str, str | None]:
    """``{package: version or None}`` of the task's pypi libraries."""
    out: dict[str, str | None] = {}
    for lib in task.get("libraries") or []:
        spec = str(((lib or {}).get("pypi") or {}).get("package", "")) if isinstance(lib, dict) else ""
        if spec:
            m = _PIN.match(spec)
            name = (m.group(1) if m else re.split(r"[<>=!~\[; ]", spec, 1)[0]).lower().replace("_", "-")
            out[name] = m.group(2) if m else None
    return out


def _package_problems(task: dict, needed, wanted: dict[str, str], why: str) -> list[str]:
    listed = _pypi_pins(task)
    msgs = []
    for pkg in needed:
        pin = wanted.get(pkg)
        if pkg not in listed:
            msgs.append(f"{why} needs {pkg} on the cluster: add a pypi library {pkg}=={pin or '<version>'}")
        elif pin and listed[pkg] != pin:
            msgs.append(f"{why}: pypi {pkg}=={listed[pkg]} differs from the tested pin {pkg}=={pin}")
    return msgs


def method_problems(bundle: Bundle, runtimes_dir: Path = RUNTIMES_DIR) -> list[Problem]:
    train_pins = setup_extra_pins(SETUP_PY)
    problems = []
    for job in bundle.jobs():
        tasks = list(_tasks(job))
        for target, values in bundle.variable_sets().items():
            adapter_only = False
            for i, task in tasks:
                params = _params(task)
                if _entry(task) != "dolly-train":
                    continue
                method = resolve(_flag(params, "--method") or "full", values)
                adapter_only = adapter_only or "--log-adapter-only" in params
                cluster = _cluster_of(job, task) or {}
                wanted = {
                    **train_pins,
                    **runtime_pins(resolve(str(cluster.get("spark_version", "")), values), runtimes_dir),
                }
                for msg in _package_problems(task, METHOD_PACKAGES.get(method, ()), wanted, f"--method {method}"):
                    problems.append(_task_problem(bundle, job, i, f"target {target}: {msg}", "methods"))
            for i, task in tasks:
                if adapter_only and _entry(task) in ADAPTER_LOADERS:
                    for msg in _package_problems(task, ("peft",), train_pins, "an adapter-only model"):
                        problems.append(_task_problem(bundle, job, i, f"target {target}: {msg}", "methods"))
    return sorted(set(problems), key=str)


def governance_problems(bundle: Bundle) -> list[Problem]:
    """Every prepare task that scans for PII (the default) installs the detectors at the pins
    tested here (setup.py's ``governance`` extra): the ML runtimes ship neither."""
    pins = setup_extra_pins(SETUP_PY, "governance")
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            if _entry(task) != "dolly-prepare" or "--no-pii-scan" in _params(task):
                continue
            for msg in _package_problems(task, GOVERNANCE_PACKAGES, pins, "the PII/secrets scan"):
                problems.append(_task_problem(bundle, job, i, msg, "governance"))
    return sorted(set(problems), key=str)


def _task_problem(bundle: Bundle, job: Job, i: int, message: str, check: str) -> Problem:
    return Problem(bundle.rel(job.file.path), f"{job.where}.tasks[{i}].libraries", message, check)


def coherence_problems(bundle: Bundle, runtimes_dir: Path = RUNTIMES_DIR) -> list[Problem]:
    return (
        runtime_problems(bundle, runtimes_dir)
        + train_shape_problems(bundle)
        + variable_description_problems(bundle)
        + register_problems(bundle)
        + resource_problems(bundle)
        + download_problems(bundle)
        + method_problems(bundle, runtimes_dir)
        + governance_problems(bundle)
        + serving_problems(bundle)
    )
