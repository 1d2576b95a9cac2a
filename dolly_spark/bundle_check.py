"""Offline checks of a Databricks Asset Bundle: the official JSON schema, plus what it cannot see.

``python -m dolly_spark.bundle_check bundles/`` validates ``databricks.yml`` and every included
file against the bundle JSON schema (``databricks bundle schema``), then checks:

- targets: ``mode`` is ``development`` or ``production``, production sets ``workspace.root_path``,
  at most one default target;
- variables: every ``${var.x}`` is declared;
- entry points: every ``python_wheel_task`` names a console script of the package's setup.py;
- parameters: every task's parameters are accepted by that entry point's real argument parser
  (``parse_args``, so unknown flags fail), once per target with that target's variable values;
- DAG: ``depends_on`` names existing tasks and has no cycle; ``job_cluster_key`` exists;
- clusters: GPU runtimes use dedicated access mode and set ``spark.task.resource.gpu.amount``;
- libraries: local ``whl`` globs point at the ``dist/`` an artifact builds.

Every problem names its file, the YAML path and the check, so a broken bundle reads like a diff review.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import glob
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

MODES = ("development", "production")
# GPU runtimes need dedicated access; these are the single-user spellings the API accepts.
DEDICATED_MODES = ("SINGLE_USER", "DATA_SECURITY_MODE_DEDICATED", "LEGACY_SINGLE_USER")
GPU_AMOUNT_CONF = "spark.task.resource.gpu.amount"
_VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")
_JOB_PARAM_REF = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z0-9_.-]+)\s*\}\}")
_REMOTE_PREFIXES = ("/", "dbfs:", "s3:", "s3a:", "gs:", "abfss:", "wasbs:", "http:", "https:")


def default_schema_path() -> Path:
    shared = Path(os.environ.get("DOLLY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return shared / "databricks-bundle-schema" / "jsonschema.json"


@dataclass(frozen=True)
class Problem:
    file: str
    where: str
    message: str
    check: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.message} [{self.check}]"


@dataclass
class BundleFile:
    path: Path
    data: dict


@dataclass
class Job:
    key: str
    file: BundleFile
    spec: dict

    @property
    def where(self) -> str:
        return f"resources.jobs.{self.key}"


@dataclass
class Bundle:
    root: Path
    files: list[BundleFile]
    load_problems: list[Problem] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve().parent))
        except ValueError:
            return str(path)

    @property
    def main(self) -> BundleFile:
        return self.files[0]

    def section(self, name: str) -> list[tuple[BundleFile, dict]]:
        return [(f, f.data[name]) for f in self.files if isinstance(f.data.get(name), dict)]

    def variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, section in self.section("variables"):
            for name, spec in section.items():
                out[name] = spec.get("default") if isinstance(spec, dict) else spec
        return out

    def targets(self) -> dict[str, tuple[BundleFile, dict]]:
        out = {}
        for f, section in self.section("targets"):
            for name, spec in section.items():
                out[name] = (f, spec or {})
        return out

    def jobs(self) -> list[Job]:
        out = []
        for f, res in self.section("resources"):
            for key, spec in (res.get("jobs") or {}).items():
                if isinstance(spec, dict):
                    out.append(Job(key, f, spec))
        return out

    def artifacts(self) -> list[tuple[BundleFile, str, dict]]:
        return [(f, name, spec) for f, sec in self.section("artifacts") for name, spec in sec.items()
                if isinstance(spec, dict)]

    def variable_sets(self) -> dict[str, dict[str, Any]]:
        """Variable values per target (declared defaults overridden by the target's values)."""
        base = self.variables()
        sets = {}
        for name, (_, spec) in self.targets().items():
            values = dict(base)
            for var, value in (spec.get("variables") or {}).items():
                values[var] = value.get("default") if isinstance(value, dict) else value
            sets[name] = values
        return sets or {"(no target)": base}


def _read_yaml(path: Path) -> Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def load_bundle(root: str | Path) -> Bundle:
    root = Path(root)
    main_file = root / "databricks.yml" if root.is_dir() else root
    root = main_file.parent
    data = _read_yaml(main_file)
    if not isinstance(data, dict):
        raise ValueError(f"{main_file}: expected a mapping at the top level")
    bundle = Bundle(root, [BundleFile(main_file, data)])
    seen = {main_file.resolve()}
    for pattern in data.get("include") or []:
        matches = sorted(glob.glob(str(root / pattern)))
        if not matches:
            bundle.load_problems.append(
                Problem(bundle.rel(main_file), "include", f"pattern {pattern!r} matches no file", "include"))
        for m in matches:
            p = Path(m)
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            included = _read_yaml(p)
            if not isinstance(included, dict):
                bundle.load_problems.append(
                    Problem(bundle.rel(p), "(top level)", "expected a mapping at the top level", "include"))
                continue
            bundle.files.append(BundleFile(p, included))
    return bundle


# ---------------------------------------------------------------------------------------------
# 1. The official JSON schema.


def _python_pattern(pattern: str) -> str:
    # The CLI's schema uses Go's \p{L} (letter) and \p{N} (number), which Python's re rejects.
    pattern = pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]")
    return pattern.replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d")


def _rewrite_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (_python_pattern(v) if k == "pattern" and isinstance(v, str) else _rewrite_patterns(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_patterns(v) for v in node]
    return node


@functools.lru_cache(maxsize=4)
def _validator(schema_path: str):
    import jsonschema

    with open(schema_path) as fh:
        schema = _rewrite_patterns(json.load(fh))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _json_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _leaves(error) -> list:
    """The specific errors under a oneOf/anyOf: follow the branch that fits the value's type.

    Every schema node is ``oneOf[object, "${var...}" string]``, so the raw error is "is not valid
    under any of the given schemas"; the useful one sits inside the branch for the value's type.
    """
    if not error.context:
        return [error]
    branches: dict = {}
    for e in error.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)

    def misfit(errors) -> bool:  # the branch rejects the value's type itself
        return any(e.validator == "type" and not e.relative_path for e in errors)

    fitting = [errs for errs in branches.values() if not misfit(errs)] or list(branches.values())
    return [leaf for e in fitting[0] for leaf in _leaves(e)]


def schema_problems(bundle: Bundle, schema_path: str | Path | None = None) -> list[Problem]:
    schema_path = Path(schema_path or default_schema_path())
    if not schema_path.exists():
        return [Problem(str(schema_path), "(schema)", "bundle JSON schema not found; set DOLLY_SHARED_DATA "
                        "or pass --schema", "schema")]
    validator = _validator(str(schema_path))
    problems = []
    known_top = set(validator.schema.get("properties", {}))
    for f in bundle.files:
        # The schema allows any top-level key; the CLI does not, so a typo like "includes" is caught here.
        for key in sorted(set(f.data) - known_top):
            problems.append(Problem(bundle.rel(f.path), key, f"unknown top-level key {key!r} "
                                    f"(known: {sorted(known_top)})", "schema"))
        for error in sorted(validator.iter_errors(f.data), key=lambda e: list(map(str, e.absolute_path))):
            for leaf in _leaves(error):
                problems.append(Problem(bundle.rel(f.path), _json_path(leaf.absolute_path), leaf.message, "schema"))
    return problems


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
            problems.append(Problem(bundle.rel(f.path), f"{where}.mode",
                                    f"mode {mode!r} is not one of {list(MODES)} (the CLI rejects it)", "targets"))
        if mode == "production" and not ((spec.get("workspace") or {}).get("root_path") or top_root):
            problems.append(Problem(bundle.rel(f.path), f"{where}.workspace.root_path",
                                    "production mode needs workspace.root_path", "targets"))
    return problems


def _walk_strings(node: Any, path: str):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")


def variable_problems(bundle: Bundle) -> list[Problem]:
    declared = set(bundle.variables())
    problems = []
    for f in bundle.files:
        for path, text in _walk_strings(f.data, ""):
            for name in _VAR_REF.findall(text):
                if name not in declared:
                    problems.append(Problem(bundle.rel(f.path), path, f"${{var.{name}}} is not declared under "
                                            f"variables (declared: {sorted(declared)})", "variables"))
    for target, (f, spec) in bundle.targets().items():
        for name in spec.get("variables") or {}:
            if name not in declared:
                problems.append(Problem(bundle.rel(f.path), f"targets.{target}.variables.{name}",
                                        "overrides a variable that is not declared", "variables"))
    return problems


def resolve(text: str, variables: dict[str, Any], job_params: dict[str, str] | None = None) -> str:
    """Substitute ``${var.x}`` and ``{{job.parameters.x}}`` the way the CLI / Jobs service would."""
    for _ in range(5):  # variables may reference variables
        new = _VAR_REF.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)
        if job_params is not None:
            new = _JOB_PARAM_REF.sub(lambda m: str(job_params.get(m.group(1), m.group(0))), new)
        if new == text:
            break
        text = new
    return text


def _setup_call(setup_py: Path) -> ast.Call:
    tree = ast.parse(setup_py.read_text(), filename=str(setup_py))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            return node
    raise ValueError(f"{setup_py}: no setup(...) call")


def console_scripts(setup_py: str | Path) -> dict[str, str]:
    """``{script name: "module:function"}`` from setup.py's entry_points, read with ast (not executed)."""
    call = _setup_call(Path(setup_py))
    for kw in call.keywords:
        if kw.arg == "entry_points":
            entry_points = ast.literal_eval(kw.value)
            out = {}
            for spec in entry_points.get("console_scripts", []):
                name, target = (s.strip() for s in spec.split("=", 1))
                out[name] = target
            return out
    return {}


def package_name(setup_py: str | Path) -> str | None:
    for kw in _setup_call(Path(setup_py)).keywords:
        if kw.arg == "name":
            return ast.literal_eval(kw.value)
    return None


def _tasks(job: Job):
    for i, task in enumerate(job.spec.get("tasks") or []):
        if isinstance(task, dict):
            yield i, task


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
                problems.append(Problem(bundle.rel(job.file.path), f"{where}.package_name",
                                        f"package_name {wheel.get('package_name')!r} is not the package "
                                        f"{pkg!r} that {setup_py.name} builds", "entry_points"))
            ep = wheel.get("entry_point")
            if ep is not None and ep not in scripts:  # a missing key is a schema problem
                problems.append(Problem(bundle.rel(job.file.path), f"{where}.entry_point",
                                        f"entry point {ep!r} is not a console script in {setup_py} "
                                        f"(known: {sorted(scripts)})", "entry_points"))
    return problems


ParserFor = Callable[[str], argparse.ArgumentParser]


def dolly_parser_for(target: str) -> argparse.ArgumentParser:
    """The real parser behind a console script target ``module:main`` (via dolly_spark.cli)."""
    from dolly_spark import cli

    module = target.split(":", 1)[0]
    commands = {mod: cmd for cmd, mod in cli.COMMANDS.items()}
    if module not in commands:
        raise LookupError(f"{module} is not a command in dolly_spark.cli.COMMANDS")
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
        job_params = {p.get("name"): p.get("default") for p in job.spec.get("parameters") or []
                      if isinstance(p, dict)}
        for i, task in _tasks(job):
            wheel = task.get("python_wheel_task")
            if not isinstance(wheel, dict) or wheel.get("entry_point") not in scripts:
                continue  # missing entry points are reported by entry_point_problems
            ep = wheel["entry_point"]
            where = f"{job.where}.tasks[{i}].python_wheel_task.parameters"
            file = bundle.rel(job.file.path)
            if wheel.get("named_parameters"):
                problems.append(Problem(file, where, "use parameters (a list of --flags), not named_parameters: "
                                        "the console scripts parse flags", "parameters"))
            params = wheel.get("parameters") or []
            for name in {n for p in params if isinstance(p, str) for n in _JOB_PARAM_REF.findall(p)}:
                if name not in job_params:
                    problems.append(Problem(file, where, f"{{{{job.parameters.{name}}}}} is not a parameter of "
                                            f"job {job.key} (has: {sorted(job_params)})", "parameters"))
            if ep not in parsers:
                try:
                    parsers[ep] = parser_for(scripts[ep])
                except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                    parsers[ep] = exc
            parser = parsers[ep]
            if isinstance(parser, Exception):
                problems.append(Problem(file, where, f"cannot build the argument parser of {ep} "
                                        f"({scripts[ep]}): {type(parser).__name__}: {parser}", "parameters"))
                continue
            failures: dict[str, list[str]] = {}
            for target, values in variable_sets.items():
                argv = [resolve(str(p), values, job_params) for p in params]
                msg = parse_error(parser, argv)
                if msg:
                    failures.setdefault(msg, []).append(target)
            for msg, targets in failures.items():
                problems.append(Problem(file, where, f"{ep} rejects these parameters (target "
                                        f"{', '.join(targets)}): {msg}", "parameters"))
    return problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
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
            problems.append(Problem(bundle.rel(job.file.path), job.where, f"job key {job.key!r} is also defined "
                                    f"in {bundle.rel(seen[job.key].file.path)}", "dag"))
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
                    problems.append(Problem(file, f"{job.where}.tasks[{i}].depends_on",
                                            f"task {task.get('task_key')!r} depends on {d!r}, which is not a task "
                                            f"of job {job.key}", "dag"))
            ck = task.get("job_cluster_key")
            if ck is not None and ck not in clusters:
                problems.append(Problem(file, f"{job.where}.tasks[{i}].job_cluster_key",
                                        f"job_cluster_key {ck!r} is not among job_clusters {sorted(clusters)}", "dag"))
        cycle = _find_cycle(graph)
        if cycle:
            problems.append(Problem(file, f"{job.where}.tasks", "depends_on has a cycle: " + " -> ".join(cycle)
                                    + " (task -> task it depends on)", "dag"))
    return problems


def _clusters(job: Job):
    for i, c in enumerate(job.spec.get("job_clusters") or []):
        if isinstance(c, dict) and isinstance(c.get("new_cluster"), dict):
            yield f"{job.where}.job_clusters[{i}].new_cluster", c["new_cluster"]
    for i, task in _tasks(job):
        if isinstance(task.get("new_cluster"), dict):
            yield f"{job.where}.tasks[{i}].new_cluster", task["new_cluster"]


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
                problems.append(Problem(bundle.rel(job.file.path), f"{where}.data_security_mode",
                                        f"GPU runtime {sorted(versions)} needs dedicated access mode "
                                        f"{DEDICATED_MODES[0]}, got {mode!r}", "clusters"))
            if GPU_AMOUNT_CONF not in (spec.get("spark_conf") or {}):
                problems.append(Problem(bundle.rel(job.file.path), f"{where}.spark_conf",
                                        f"GPU cluster without {GPU_AMOUNT_CONF} (distributed training and "
                                        "per-GPU scoring need it)", "clusters"))
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
            if isinstance(task.get("python_wheel_task"), dict) and not any("whl" in lib for lib in libs) \
                    and not task.get("environment_key"):
                problems.append(Problem(bundle.rel(job.file.path), f"{where}.libraries",
                                        "python_wheel_task without a whl library: the cluster would not have "
                                        "the package", "libraries"))
            for j, lib in enumerate(libs):
                whl = lib.get("whl")
                if not isinstance(whl, str) or whl.startswith(_REMOTE_PREFIXES) or "${" in whl:
                    continue
                target = (job.file.path.parent / whl).resolve()
                if not any(target.parent == d for _, d in built):
                    rel = os.path.relpath(target, bundle.root.resolve())
                    wanted = ", ".join(f"{n}: {os.path.relpath(d, bundle.root.resolve())}/" for n, d in built)
                    problems.append(Problem(bundle.rel(job.file.path), f"{where}.libraries[{j}].whl",
                                            f"{whl} (relative to this file) is {rel} from the bundle root, which no "
                                            f"artifact builds into (artifacts: {wanted or 'none'})", "libraries"))
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
                problems.append(Problem(bundle.rel(job.file.path), f"{job.where}.tasks[{i}].spark_python_task",
                                        f"python_file {path} (relative to this file) does not exist", "entry_points"))
    return problems


def find_setup_py(bundle: Bundle) -> Path:
    """setup.py of the first whl artifact, else beside or above the bundle root."""
    for f, _, spec in bundle.artifacts():
        candidate = (f.path.parent / spec.get("path", ".") / "setup.py").resolve()
        if candidate.exists():
            return candidate
    for d in (bundle.root, *bundle.root.resolve().parents):
        if (d / "setup.py").exists():
            return d / "setup.py"
    raise FileNotFoundError(f"no setup.py for bundle {bundle.root}")


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
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dolly_spark.bundle_check", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", nargs="?", default="bundles", help="bundle directory (with databricks.yml)")
    parser.add_argument("--schema", default=None, help=f"bundle JSON schema (default {default_schema_path()})")
    parser.add_argument("--setup-py", default=None, help="setup.py declaring the console scripts")
    parser.add_argument("--skip-parameters", action="store_true",
                        help="do not import the job modules to parse task parameters")
    args = parser.parse_args(argv)
    problems = check_bundle(args.bundle, args.schema, args.setup_py,
                            None if args.skip_parameters else dolly_parser_for)
    if problems:
        print(f"{len(problems)} problem(s) in bundle {args.bundle}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    bundle = load_bundle(args.bundle)
    tasks = sum(len(j.spec.get("tasks") or []) for j in bundle.jobs())
    print(f"bundle {args.bundle}: OK ({len(bundle.files)} files, {len(bundle.jobs())} jobs, {tasks} tasks, "
          f"targets {sorted(bundle.targets())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
