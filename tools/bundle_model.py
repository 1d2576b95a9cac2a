"""A Databricks Asset Bundle read from disk: its files, targets, variables, jobs and tasks.

``tools.bundle_check`` runs its checks over this model.
"""

from __future__ import annotations

import ast
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        return [
            (f, name, spec)
            for f, sec in self.section("artifacts")
            for name, spec in sec.items()
            if isinstance(spec, dict)
        ]

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
                Problem(bundle.rel(main_file), "include", f"pattern {pattern!r} matches no file", "include")
            )
        for m in matches:
            p = Path(m)
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            included = _read_yaml(p)
            if not isinstance(included, dict):
                bundle.load_problems.append(
                    Problem(bundle.rel(p), "(top level)", "expected a mapping at the top level", "include")
                )
                continue
            bundle.files.append(BundleFile(p, included))
    return bundle


def _python_pattern(pattern: str) -> str:
    # The CLI's schema uses Go's \p{L} (letter) and \p{N} (number), which Python's re rejects.
    pattern = pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]")
    return pattern.replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d")


def _rewrite_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (_python_pattern(v) if k == "pattern" and isinstance(v, str) else _rewrite_patterns(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_patterns(v) for v in node]
    return node


def _walk_strings(node: Any, path: str):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")


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


def _clusters(job: Job):
    for i, c in enumerate(job.spec.get("job_clusters") or []):
        if isinstance(c, dict) and isinstance(c.get("new_cluster"), dict):
            yield f"{job.where}.job_clusters[{i}].new_cluster", c["new_cluster"]
    for i, task in _tasks(job):
        if isinstance(task.get("new_cluster"), dict):
            yield f"{job.where}.tasks[{i}].new_cluster", task["new_cluster"]


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


# A task's wheel parameters, one flag's value, its entry point (the coherence and serving checks).
def _params(task: dict) -> list[str]:
    return [str(p) for p in ((task.get("python_wheel_task") or {}).get("parameters") or [])]


def _flag(params: list[str], flag: str) -> str | None:
    for i, p in enumerate(params):
        if p == flag and i + 1 < len(params):
            return params[i + 1]
        if p.startswith(flag + "="):
            return p.split("=", 1)[1]
    return None


def _entry(task: dict) -> str | None:
    return (task.get("python_wheel_task") or {}).get("entry_point")


# Every task a task depends on, directly or through others.
def _ancestors(job: Job, key: str) -> set[str]:
    deps = {
        t.get("task_key"): [d.get("task_key") for d in t.get("depends_on") or [] if isinstance(d, dict)]
        for _, t in _tasks(job)
    }
    seen, stack = set(), list(deps.get(key, []))
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(deps.get(k, []))
    return seen
