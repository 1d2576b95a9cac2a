"""Offline checks of a Databricks Asset Bundle: the official JSON schema, plus what it cannot see.

``python -m tools.bundle_check bundles/`` validates ``databricks.yml`` and every included
file against the bundle JSON schema (``databricks bundle schema``), then checks:

- targets: ``mode`` is ``development`` or ``production``, production sets ``workspace.root_path``,
  at most one default target;
- variables: every ``${var.x}`` is declared;
- entry points: every ``python_wheel_task`` names a console script of the package's setup.py;
- parameters: every task's parameters are accepted by that entry point's real argument parser
  (``parse_args``, so unknown flags fail), once per target with that target's variable values;
- DAG: ``depends_on`` names existing tasks and has no cycle; ``job_cluster_key`` exists;
- clusters: GPU runtimes use dedicated access mode and set ``spark.task.resource.gpu.amount``;
- libraries: local ``whl`` globs point at the ``dist/`` an artifact builds;
- coherence with the code and the supported runtimes (tools/bundle_coherence.py): runtime keys,
  train cluster shape, GPU families, variable descriptions, register's run id, declared resources,
  the serving endpoint and the task that moves it (tools/bundle_serving.py).

Every problem names its file, the YAML path and the check, so a broken bundle reads like a diff review.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Callable

from tools.bundle_coherence import coherence_problems
from tools.bundle_model import (
    _JOB_PARAM_REF,
    _REMOTE_PREFIXES,
    _VAR_REF,
    DEDICATED_MODES,
    GPU_AMOUNT_CONF,
    MODES,
    Bundle,
    Job,
    Problem,
    _clusters,
    _tasks,
    _walk_strings,
    console_scripts,
    default_schema_path,
    find_setup_py,
    load_bundle,
    package_name,
    resolve,
)
from tools.bundle_schema import schema_problems

# ---------------------------------------------------------------------------------------------
# 1. The official JSON schema.


# ---------------------------------------------------------------------------------------------
# 2. What the schema cannot see.


def target_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    targets = bundle.targets()
    defaults = [name for name, (_, spec) in targets.items() if spec.get("default") is True]
    if len(defaults) > 1:
        f, _ = targets[defaults[0]]
        problems.append(Problem(bundle.rel(f.path), "targets", f"more than one default target: {defaults}", "targets"))
    top_root = (bundle.main.data.get("workspace") or {}).get("root_path")
    for name, (f, spec) in targets.items():
        where = f"targets.{name}"
        mode = spec.get("mode")
        if mode is not None and mode not in MODES:
            problems.append(
                Problem(
                    bundle.rel(f.path),
                    f"{where}.mode",
                    f"mode {mode!r} is not one of {list(MODES)} (the CLI rejects it)",
                    "targets",
                )
            )
        if mode == "production" and not ((spec.get("workspace") or {}).get("root_path") or top_root):
            problems.append(
                Problem(
                    bundle.rel(f.path),
                    f"{where}.workspace.root_path",
                    "production mode needs workspace.root_path",
                    "targets",
                )
            )
    return problems


def variable_problems(bundle: Bundle) -> list[Problem]:
    declared = set(bundle.variables())
    problems = []
    for f in bundle.files:
        for path, text in _walk_strings(f.data, ""):
            for name in _VAR_REF.findall(text):
                if name not in declared:
                    problems.append(
                        Problem(
                            bundle.rel(f.path),
                            path,
                            f"${{var.{name}}} is not declared under variables (declared: {sorted(declared)})",
                            "variables",
                        )
                    )
    for target, (f, spec) in bundle.targets().items():
        for name in spec.get("variables") or {}:
            if name not in declared:
                problems.append(
                    Problem(
                        bundle.rel(f.path),
                        f"targets.{target}.variables.{name}",
                        "overrides a variable that is not declared",
                        "variables",
                    )
                )
    return problems


def entry_point_problems(bundle: Bundle, setup_py: Path) -> list[Problem]:
    scripts = console_scripts(setup_py)
    pkg = package_name(setup_py)
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            wheel = task.get("python_wheel_task")
            if not isinstance(wheel, dict):
                continue
            where = f"{job.where}.tasks[{i}].python_wheel_task"
            if pkg and wheel.get("package_name") != pkg:
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{where}.package_name",
                        f"package_name {wheel.get('package_name')!r} is not the package "
                        f"{pkg!r} that {setup_py.name} builds",
                        "entry_points",
                    )
                )
            ep = wheel.get("entry_point")
            if ep is not None and ep not in scripts:  # a missing key is a schema problem
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{where}.entry_point",
                        f"entry point {ep!r} is not a console script in {setup_py} (known: {sorted(scripts)})",
                        "entry_points",
                    )
                )
    return problems


ParserFor = Callable[[str], argparse.ArgumentParser]


def dolly_parser_for(target: str) -> argparse.ArgumentParser:
    """The real parser behind a console script target ``module:main`` (via dolly_spark.commands.cli)."""
    from dolly_spark.commands import cli

    module = target.split(":", 1)[0]
    commands = {mod: cmd for cmd, mod in cli.COMMANDS.items()}
    if module not in commands:
        raise LookupError(f"{module} is not a command in dolly_spark.commands.cli.COMMANDS")
    return cli.parser_for(commands[module])


def parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None when ``parser.parse_args(argv)`` accepts argv, else argparse's own message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        if exc.code == 0:
            return "exits before running (a help/version flag?)"
        return lines[-1] if lines else f"exit status {exc.code}"
    return None


def parameter_problems(bundle: Bundle, setup_py: Path, parser_for: ParserFor = dolly_parser_for) -> list[Problem]:
    scripts = console_scripts(setup_py)
    variable_sets = bundle.variable_sets()
    parsers: dict[str, argparse.ArgumentParser | Exception] = {}
    problems = []
    for job in bundle.jobs():
        job_params = {p.get("name"): p.get("default") for p in job.spec.get("parameters") or [] if isinstance(p, dict)}
        for i, task in _tasks(job):
            wheel = task.get("python_wheel_task")
            if not isinstance(wheel, dict) or wheel.get("entry_point") not in scripts:
                continue  # missing entry points are reported by entry_point_problems
            ep = wheel["entry_point"]
            where = f"{job.where}.tasks[{i}].python_wheel_task.parameters"
            file = bundle.rel(job.file.path)
            if wheel.get("named_parameters"):
                problems.append(
                    Problem(
                        file,
                        where,
                        "use parameters (a list of --flags), not named_parameters: the console scripts parse flags",
                        "parameters",
                    )
                )
            params = wheel.get("parameters") or []
            for name in {n for p in params if isinstance(p, str) for n in _JOB_PARAM_REF.findall(p)}:
                if name not in job_params:
                    problems.append(
                        Problem(
                            file,
                            where,
                            f"{{{{job.parameters.{name}}}}} is not a parameter of "
                            f"job {job.key} (has: {sorted(job_params)})",
                            "parameters",
                        )
                    )
            if ep not in parsers:
                try:
                    parsers[ep] = parser_for(scripts[ep])
                except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                    parsers[ep] = exc
            parser = parsers[ep]
            if isinstance(parser, Exception):
                problems.append(
                    Problem(
                        file,
                        where,
                        f"cannot build the argument parser of {ep} ({scripts[ep]}): {type(parser).__name__}: {parser}",
                        "parameters",
                    )
                )
                continue
            failures: dict[str, list[str]] = {}
            for target, values in variable_sets.items():
                argv = [resolve(str(p), values, job_params) for p in params]
                msg = parse_error(parser, argv)
                if msg:
                    failures.setdefault(msg, []).append(target)
            for msg, targets in failures.items():
                problems.append(
                    Problem(
                        file, where, f"{ep} rejects these parameters (target {', '.join(targets)}): {msg}", "parameters"
                    )
                )
    return problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def dag_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    seen: dict[str, Job] = {}
    for job in bundle.jobs():
        if job.key in seen:  # the CLI refuses a resource key defined twice
            problems.append(
                Problem(
                    bundle.rel(job.file.path),
                    job.where,
                    f"job key {job.key!r} is also defined in {bundle.rel(seen[job.key].file.path)}",
                    "dag",
                )
            )
        seen[job.key] = job
        file = bundle.rel(job.file.path)
        keys: list[str] = [t.get("task_key") for _, t in _tasks(job)]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            problems.append(Problem(file, f"{job.where}.tasks", f"duplicate task_key {dupes}", "dag"))
        clusters = {c.get("job_cluster_key") for c in job.spec.get("job_clusters") or [] if isinstance(c, dict)}
        graph: dict[str, list[str]] = {}
        for i, task in _tasks(job):
            deps = [d.get("task_key") for d in task.get("depends_on") or [] if isinstance(d, dict)]
            graph[task.get("task_key")] = deps
            for d in deps:
                if d not in keys:
                    problems.append(
                        Problem(
                            file,
                            f"{job.where}.tasks[{i}].depends_on",
                            f"task {task.get('task_key')!r} depends on {d!r}, which is not a task of job {job.key}",
                            "dag",
                        )
                    )
            ck = task.get("job_cluster_key")
            if ck is not None and ck not in clusters:
                problems.append(
                    Problem(
                        file,
                        f"{job.where}.tasks[{i}].job_cluster_key",
                        f"job_cluster_key {ck!r} is not among job_clusters {sorted(clusters)}",
                        "dag",
                    )
                )
        cycle = _find_cycle(graph)
        if cycle:
            problems.append(
                Problem(
                    file,
                    f"{job.where}.tasks",
                    "depends_on has a cycle: " + " -> ".join(cycle) + " (task -> task it depends on)",
                    "dag",
                )
            )
    return problems


def cluster_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    variable_sets = bundle.variable_sets()
    for job in bundle.jobs():
        for where, spec in _clusters(job):
            versions = {resolve(str(spec.get("spark_version", "")), v) for v in variable_sets.values()}
            if not any("gpu" in v for v in versions):
                continue
            mode = spec.get("data_security_mode")
            if mode not in DEDICATED_MODES:
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{where}.data_security_mode",
                        f"GPU runtime {sorted(versions)} needs dedicated access mode "
                        f"{DEDICATED_MODES[0]}, got {mode!r}",
                        "clusters",
                    )
                )
            if GPU_AMOUNT_CONF not in (spec.get("spark_conf") or {}):
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{where}.spark_conf",
                        f"GPU cluster without {GPU_AMOUNT_CONF} (distributed training and per-GPU scoring need it)",
                        "clusters",
                    )
                )
    return problems


def library_problems(bundle: Bundle) -> list[Problem]:
    built: list[tuple[str, Path]] = []  # (artifact name, directory its wheels land in)
    for f, name, spec in bundle.artifacts():
        base = (f.path.parent / spec.get("path", ".")).resolve()
        sources = [s.get("source") for s in spec.get("files") or [] if isinstance(s, dict)]
        dirs = [(f.path.parent / s).resolve().parent for s in sources if s] or [base / "dist"]
        built.extend((name, d) for d in dirs)
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            libs = [lib for lib in task.get("libraries") or [] if isinstance(lib, dict)]
            where = f"{job.where}.tasks[{i}]"
            if (
                isinstance(task.get("python_wheel_task"), dict)
                and not any("whl" in lib for lib in libs)
                and not task.get("environment_key")
            ):
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{where}.libraries",
                        "python_wheel_task without a whl library: the cluster would not have the package",
                        "libraries",
                    )
                )
            for j, lib in enumerate(libs):
                whl = lib.get("whl")
                if not isinstance(whl, str) or whl.startswith(_REMOTE_PREFIXES) or "${" in whl:
                    continue
                target = (job.file.path.parent / whl).resolve()
                if not any(target.parent == d for _, d in built):
                    rel = os.path.relpath(target, bundle.root.resolve())
                    wanted = ", ".join(f"{n}: {os.path.relpath(d, bundle.root.resolve())}/" for n, d in built)
                    problems.append(
                        Problem(
                            bundle.rel(job.file.path),
                            f"{where}.libraries[{j}].whl",
                            f"{whl} (relative to this file) is {rel} from the bundle root, which no "
                            f"artifact builds into (artifacts: {wanted or 'none'})",
                            "libraries",
                        )
                    )
    return problems


def spark_python_problems(bundle: Bundle) -> list[Problem]:
    problems = []
    for job in bundle.jobs():
        for i, task in _tasks(job):
            spt = task.get("spark_python_task")
            if not isinstance(spt, dict) or spt.get("source") == "GIT":
                continue
            path = str(spt.get("python_file", ""))
            if path.startswith(_REMOTE_PREFIXES) or "${" in path:
                continue
            if not (job.file.path.parent / path).is_file():
                problems.append(
                    Problem(
                        bundle.rel(job.file.path),
                        f"{job.where}.tasks[{i}].spark_python_task",
                        f"python_file {path} (relative to this file) does not exist",
                        "entry_points",
                    )
                )
    return problems


def check_bundle(
    root: str | Path,
    schema_path: str | Path | None = None,
    setup_py: str | Path | None = None,
    parser_for: ParserFor | None = dolly_parser_for,
) -> list[Problem]:
    """Every problem found; empty means the bundle passed. ``parser_for=None`` skips parameter parsing."""
    bundle = load_bundle(root)
    setup = Path(setup_py) if setup_py else find_setup_py(bundle)
    problems = list(bundle.load_problems)
    problems += schema_problems(bundle, schema_path)
    problems += target_problems(bundle)
    problems += variable_problems(bundle)
    problems += entry_point_problems(bundle, setup)
    problems += spark_python_problems(bundle)
    if parser_for is not None:
        problems += parameter_problems(bundle, setup, parser_for)
    problems += dag_problems(bundle)
    problems += cluster_problems(bundle)
    problems += library_problems(bundle)
    problems += coherence_problems(bundle)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bundle_check", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", nargs="?", default="bundles", help="bundle directory (with databricks.yml)")
    parser.add_argument("--schema", default=None, help=f"bundle JSON schema (default {default_schema_path()})")
    parser.add_argument("--setup-py", default=None, help="setup.py declaring the console scripts")
    parser.add_argument(
        "--skip-parameters", action="store_true", help="do not import the job modules to parse task parameters"
    )
    args = parser.parse_args(argv)
    problems = check_bundle(args.bundle, args.schema, args.setup_py, None if args.skip_parameters else dolly_parser_for)
    if problems:
        print(f"{len(problems)} problem(s) in bundle {args.bundle}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    bundle = load_bundle(args.bundle)
    tasks = sum(len(j.spec.get("tasks") or []) for j in bundle.jobs())
    print(
        f"bundle {args.bundle}: OK ({len(bundle.files)} files, {len(bundle.jobs())} jobs, {tasks} tasks, "
        f"targets {sorted(bundle.targets())})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
