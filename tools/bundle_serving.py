"""Bundle checks for Model Serving: the endpoint serves the model the jobs register, the way the
project runs it, and the job that moves its alias moves the endpoint too.

- endpoint: some ``model_serving_endpoints`` resource serves a model that a register task
  registers; each served entity of a registered model has its workload type and size from
  variables, the type a GPU one in every target, and scales to zero; traffic routes name served
  entities and add up to 100; the AI Gateway inference table is enabled in the bundle's catalog
  and schema;
- endpoint task: a job whose register task registers a served model runs ``dolly-endpoint`` after
  it (so a failed gate stops it), passing that endpoint (by its resource reference, which
  development mode's name prefix keeps right), the same ``--model-name`` and the same ``--alias``;
  a ``dolly-endpoint`` task with no upstream register task would move the endpoint ungated.
"""

from __future__ import annotations

import re

from tools.bundle_model import _VAR_REF, Bundle, Job, Problem, _ancestors, _entry, _flag, _params, _tasks, resolve

GPU_WORKLOAD = re.compile(r"^(MULTI)?GPU_[A-Z0-9_]+$")
WORKLOAD_SIZES = ("Small", "Medium", "Large")
ENDPOINT_ENTRY = "dolly-endpoint"
_ENDPOINT_REF = re.compile(r"^\$\{resources\.model_serving_endpoints\.([A-Za-z0-9_-]+)\.name\}$")


def endpoints(bundle: Bundle) -> list[tuple[object, str, dict]]:
    """(file, resource key, spec) of every model serving endpoint."""
    return [
        (f, key, spec)
        for f, res in bundle.section("resources")
        for key, spec in (res.get("model_serving_endpoints") or {}).items()
        if isinstance(spec, dict)
    ]


def registered_models(bundle: Bundle) -> dict[str, list[tuple[Job, dict]]]:
    """{--model-name as written: [(job, register task)]} over every register task."""
    out: dict[str, list[tuple[Job, dict]]] = {}
    for job in bundle.jobs():
        for _, task in _tasks(job):
            if _entry(task) == "dolly-register" and _flag(_params(task), "--model-name"):
                out.setdefault(_flag(_params(task), "--model-name"), []).append((job, task))
    return out


def _entities(spec: dict) -> list[dict]:
    return [e for e in ((spec.get("config") or {}).get("served_entities") or []) if isinstance(e, dict)]


def _schema_refs(bundle: Bundle) -> set[str]:
    schemas = {k for _, res in bundle.section("resources") for k in (res.get("schemas") or {})}
    return {"${var.schema}"} | {f"${{resources.schemas.{k}.name}}" for k in schemas}


def _entity_problems(bundle: Bundle, where: str, entity: dict) -> list[str]:
    msgs = []
    for key in ("workload_type", "workload_size"):
        if not _VAR_REF.fullmatch(str(entity.get(key, ""))):
            msgs.append(f"{where}.{key}: take it from a variable (got {entity.get(key)!r})")
    for target, values in bundle.variable_sets().items():
        kind = resolve(str(entity.get("workload_type", "")), values)
        size = resolve(str(entity.get("workload_size", "")), values)
        if not GPU_WORKLOAD.match(kind):
            msgs.append(f"{where}.workload_type: target {target}: {kind!r} is not a GPU workload type (GPU_*)")
        if size not in WORKLOAD_SIZES:
            msgs.append(f"{where}.workload_size: target {target}: {size!r} is not one of {list(WORKLOAD_SIZES)}")
    if entity.get("scale_to_zero_enabled") is not True:
        msgs.append(f"{where}.scale_to_zero_enabled: must be true (an idle GPU endpoint costs by the hour)")
    return msgs


def _traffic_problems(where: str, spec: dict) -> list[str]:
    names = {e.get("name") for e in _entities(spec)}
    routes = [r for r in (((spec.get("config") or {}).get("traffic_config") or {}).get("routes") or [])]
    if not routes:
        return []
    msgs = [
        f"{where}.config.traffic_config: route to {r.get('served_entity_name')!r}, not a served entity "
        f"({sorted(map(str, names))})"
        for r in routes
        if r.get("served_entity_name") not in names
    ]
    total = sum(int(r.get("traffic_percentage") or 0) for r in routes)
    if total != 100:
        msgs.append(f"{where}.config.traffic_config: traffic adds up to {total}%, not 100%")
    return msgs


def _gateway_problems(bundle: Bundle, where: str, spec: dict) -> list[str]:
    table = (spec.get("ai_gateway") or {}).get("inference_table_config") or {}
    if table.get("enabled") is not True:
        return [f"{where}.ai_gateway.inference_table_config: enable the inference table (requests to Delta)"]
    if str(table.get("catalog_name")) != "${var.catalog}" or str(table.get("schema_name")) not in _schema_refs(bundle):
        return [
            f"{where}.ai_gateway.inference_table_config: put it in the bundle's schema "
            f"(catalog_name ${{var.catalog}}, schema_name one of {sorted(_schema_refs(bundle))})"
        ]
    return []


def endpoint_problems(bundle: Bundle) -> list[Problem]:
    registered = registered_models(bundle)
    found = endpoints(bundle)
    if not any(e.get("entity_name") in registered for _, _, spec in found for e in _entities(spec)):
        return [
            Problem(
                bundle.rel(bundle.main.path),
                "resources.model_serving_endpoints",
                f"no serving endpoint serves a model the register tasks register ({sorted(registered)})",
                "serving",
            )
        ]
    problems = []
    for f, key, spec in found:
        where = f"resources.model_serving_endpoints.{key}"
        msgs = _traffic_problems(where, spec) + _gateway_problems(bundle, where, spec)
        for i, entity in enumerate(_entities(spec)):
            if entity.get("entity_name") in registered:
                msgs += _entity_problems(bundle, f"{where}.config.served_entities[{i}]", entity)
        problems += [Problem(bundle.rel(f.path), m.split(": ", 1)[0], m.split(": ", 1)[1], "serving") for m in msgs]
    return problems


def _task_msgs(job: Job, task: dict, register: dict, endpoint_key: str, endpoint_name: str) -> list[str]:
    params, reg = _params(task), _params(register)
    msgs = []
    if register.get("task_key") not in _ancestors(job, task.get("task_key")):
        msgs.append(f"run it after register task {register.get('task_key')!r} (depends_on), so a failed gate stops it")
    name = _flag(params, "--name") or ""
    ref = _ENDPOINT_REF.match(name)
    if not ((ref and ref.group(1) == endpoint_key) or name == endpoint_name):
        msgs.append(
            f"--name {name!r} is not the endpoint; pass ${{resources.model_serving_endpoints.{endpoint_key}.name}}"
        )
    for flag in ("--model-name", "--alias"):
        if _flag(params, flag) != _flag(reg, flag):
            msgs.append(f"{flag} {_flag(params, flag)!r} differs from the register task's {_flag(reg, flag)!r}")
    return msgs


def endpoint_task_problems(bundle: Bundle) -> list[Problem]:
    served = {
        e.get("entity_name"): (key, str(spec.get("name")))
        for _, key, spec in endpoints(bundle)
        for e in _entities(spec)
    }
    problems = []
    for job in bundle.jobs():
        tasks = list(_tasks(job))
        registers = [t for _, t in tasks if _entry(t) == "dolly-register"]
        movers = [(i, t) for i, t in tasks if _entry(t) == ENDPOINT_ENTRY]
        for i, task in movers:
            if not any(r.get("task_key") in _ancestors(job, task.get("task_key")) for r in registers):
                problems.append(_problem(bundle, job, i, "no upstream register task: the endpoint would move ungated"))
        for register in registers:
            model = _flag(_params(register), "--model-name")
            if model not in served:
                continue
            key, name = served[model]
            if not movers:
                msg = f"register serves {model} on endpoint {key}: add a {ENDPOINT_ENTRY} task after it"
                problems.append(Problem(bundle.rel(job.file.path), f"{job.where}.tasks", msg, "serving"))
            for i, task in movers:
                for msg in _task_msgs(job, task, register, key, name):
                    problems.append(_problem(bundle, job, i, msg))
    return problems


def _problem(bundle: Bundle, job: Job, i: int, message: str) -> Problem:
    return Problem(bundle.rel(job.file.path), f"{job.where}.tasks[{i}].python_wheel_task", message, "serving")


def serving_problems(bundle: Bundle) -> list[Problem]:
    return endpoint_problems(bundle) + endpoint_task_problems(bundle)
