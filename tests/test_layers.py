"""The package's layers point one way: commands -> pipelines -> steps -> io.

- ``ALLOWED`` says which top-level part of ``dolly_spark`` may import which (imports inside
  functions counted); every part must be placed in it;
- only ``commands`` and ``tracking`` write to MLflow (log, tag, start runs, register, ...);
  library code may read it (download artifacts, load a model, resolve an alias);
- ``dolly_spark.train`` (the per-rank code) never loads pyspark, checked by importing every one
  of its modules in a fresh interpreter;
- the import graph, function-level imports counted, is acyclic.

Each check is a function of a package root, so the tests below also run it on a copy of the
package with a violation planted and show that it fails there.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dolly_spark"

# Which part of dolly_spark may import which. A part is a subpackage, a module directly under
# dolly_spark/, or "__init__" (the package itself: importing dolly_spark must not pull in a layer).
# Importing the bare package (for __version__ or __file__) is always allowed.
ALLOWED: dict[str, set[str]] = {
    "commands": {"launch", "ops", "prep", "serve", "text", "tracking", "train"},
    "tracking": {"launch", "ops", "prep", "serve", "text", "train"},
    "launch": {"ops", "text", "train"},
    "prep": {"ops", "text"},
    "serve": {"ops", "text"},
    "train": {"ops", "text"},
    "text": set(),
    "ops": set(),
    "__init__": set(),
}
# Where MLflow may be written to; everywhere else only reads it.
MLFLOW_WRITERS = {"commands", "tracking"}
# MLflow names its writes by verb: log_metric, set_tag, start_run, register_model, Model.log, ...
MLFLOW_WRITE = re.compile(
    r"^(log|autolog|evaluate)$"
    r"|^(log|set|create|delete|update|restore|rename|register|save|start|end|finalize|transition)_"
)
# Where the store is: a process setting, not something recorded in it.
MLFLOW_NOT_WRITES = {"set_tracking_uri", "set_registry_uri"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def part_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def python_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def imports_of(path: Path, root: Path) -> set[str]:
    """Every dolly_spark module a file imports, including imports inside functions."""
    name = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m == "dolly_spark" or m.startswith("dolly_spark.")}


# ---------------------------------------------------------------------------------------------
# The checks: each takes a package root and returns what is wrong there (empty: all good).


def unplaced_parts(root: Path) -> set[str]:
    """Parts of the package that ALLOWED does not mention: a new one must be placed first."""
    return {part_of(p, root) for p in python_files(root)} - set(ALLOWED)


def forbidden_imports(root: Path) -> list[str]:
    offenders = []
    for p in python_files(root):
        own = part_of(p, root)
        for target in sorted(imports_of(p, root)):
            if target == "dolly_spark":
                continue
            dest = target.split(".")[1]
            if dest != own and dest not in ALLOWED.get(own, set()):
                offenders.append(f"{module_name(p, root)} imports {target}")
    return offenders


def _is_mlflow(module: str) -> bool:
    return module == "mlflow" or module.startswith("mlflow.")


def _chain(node, bound: dict[str, str]) -> str | None:
    """``mlflow.pyfunc.log_model`` / ``mlflow.MlflowClient().set_tag`` for an expression rooted
    in an MLflow name, else None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _chain(node.value, bound)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call):
        base = _chain(node.func, bound)
        return f"{base}()" if base else None
    return None


def _bindings(node) -> list[tuple[str, ast.AST]]:
    """(name, value) pairs a statement binds: ``x = v``, ``x: T = v``, ``(x := v)``, ``with v as x``."""
    if isinstance(node, ast.Assign):
        return [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name) and node.value:
        return [(node.target.id, node.value)]
    if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
        return [(node.optional_vars.id, node.context_expr)]
    return []


def mlflow_names(tree: ast.AST) -> dict[str, str]:
    """Names a file binds to MLflow objects (in any scope): ``import mlflow [as mf]``,
    ``import mlflow.pyfunc``, ``from mlflow.models import Model``, and names assigned from
    expressions rooted in those (``client = MlflowClient()``)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_mlflow(a.name) and a.asname:
                    bound[a.asname] = a.name
                elif _is_mlflow(a.name):  # `import mlflow.pyfunc` binds `mlflow`
                    bound["mlflow"] = "mlflow"
        elif isinstance(node, ast.ImportFrom) and not node.level and _is_mlflow(node.module or ""):
            bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    changed = True
    while changed:  # until no assignment adds a name: `c = MlflowClient(); d = c` binds both
        changed = False
        for node in ast.walk(tree):
            for name, value in _bindings(node):
                chain = _chain(value, bound)
                if chain and name not in bound:
                    bound[name] = chain
                    changed = True
    return bound


def mlflow_writes(root: Path) -> list[str]:
    """Calls that write to MLflow in files outside MLFLOW_WRITERS, as ``module:line chain``."""
    offenders = []
    for p in python_files(root):
        if part_of(p, root) in MLFLOW_WRITERS:
            continue
        tree = ast.parse(p.read_text())
        bound = mlflow_names(tree)
        for node in ast.walk(tree):
            chain = _chain(node.func, bound) if isinstance(node, ast.Call) else None
            verb = chain.rsplit(".", 1)[-1] if chain else ""
            if MLFLOW_WRITE.search(verb) and verb not in MLFLOW_NOT_WRITES:
                offenders.append(f"{module_name(p, root)}:{node.lineno} {chain}")
    return offenders


def import_cycle(root: Path) -> list[str]:
    """One cycle of the module import graph (function-level imports counted), or []."""
    graph = {module_name(p, root): imports_of(p, root) for p in python_files(root)}
    graph = {m: {t for t in deps if t in graph and t != m and not m.startswith(t + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack) -> list[str]:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack + [m, t]
            if t not in state:
                found = visit(t, stack + [m])
                if found:
                    return found
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return []


def pyspark_loaded_by_train(root: Path) -> tuple[int, list[str]]:
    """(train modules imported, pyspark modules loaded) in a fresh interpreter that imports
    every module of ``root``'s train package."""
    mods = sorted(module_name(p, root) for p in (root / "train").rglob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k == 'pyspark' or k.startswith('pyspark.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(root.parent)}  # this root's package, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root.parent, env=env, timeout=300
    )
    return len(mods), ast.literal_eval(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The package as it is.


def test_every_part_of_the_package_is_placed_in_the_matrix():
    assert not unplaced_parts(PACKAGE)


def test_imports_follow_the_matrix():
    assert not forbidden_imports(PACKAGE)


def test_the_matrix_keeps_the_house_rules():
    assert all("commands" not in allowed for allowed in ALLOWED.values())
    assert {part for part, allowed in ALLOWED.items() if "tracking" in allowed} == {"commands"}
    assert ALLOWED["ops"] == set() and ALLOWED["__init__"] == set()
    assert not ALLOWED["train"] & {"prep", "serve", "launch", "commands", "tracking"}


def test_only_commands_and_tracking_write_to_mlflow():
    assert not mlflow_writes(PACKAGE)


def test_import_graph_is_acyclic():
    assert not import_cycle(PACKAGE)


def test_train_package_never_loads_pyspark():
    imported, loaded = pyspark_loaded_by_train(PACKAGE)
    assert imported >= 6
    assert loaded == []


# ---------------------------------------------------------------------------------------------
# Each check fails on a copy of the package with a violation planted.


@pytest.fixture
def package_copy(tmp_path) -> Path:
    root = tmp_path / "dolly_spark"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def plant(root: Path, rel: str, code: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)


def test_a_new_part_fails_until_it_is_placed(package_copy):
    plant(package_copy, "newpart/__init__.py", "")
    plant(package_copy, "loose.py", "")
    assert unplaced_parts(package_copy) == {"newpart", "loose"}


@pytest.mark.parametrize(
    "rel, code, offender",
    [
        (
            "serve/planted.py",
            "def f():\n    from dolly_spark.tracking.registry import register\n",
            "dolly_spark.serve.planted imports dolly_spark.tracking.registry",
        ),
        ("prep/planted.py", "from dolly_spark import launch\n", "dolly_spark.prep.planted imports dolly_spark.launch"),
        ("prep/planted.py", "from ..commands import run\n", "dolly_spark.prep.planted imports dolly_spark.commands"),
        (
            "ops/planted.py",
            "import dolly_spark.text.prompts\n",
            "dolly_spark.ops.planted imports dolly_spark.text.prompts",
        ),
        (
            "train/planted.py",
            "from dolly_spark.prep import gold\n",
            "dolly_spark.train.planted imports dolly_spark.prep",
        ),
        ("__init__.py", "from dolly_spark import ops\n", "dolly_spark imports dolly_spark.ops"),
    ],
)
def test_an_import_outside_the_matrix_fails(package_copy, rel, code, offender):
    plant(package_copy, rel, code)
    assert offender in forbidden_imports(package_copy)


@pytest.mark.parametrize(
    "code, offender",
    [
        # the call the layer test used to miss: an attribute chain under the module
        ("import mlflow\n\ndef f():\n    mlflow.pyfunc.log_model(name='m')\n", "mlflow.pyfunc.log_model"),
        ("import mlflow.pyfunc\n\ndef f():\n    mlflow.pyfunc.log_model(name='m')\n", "mlflow.pyfunc.log_model"),
        ("from mlflow.models import Model\n\ndef f():\n    Model.log(flavor=None)\n", "mlflow.models.Model.log"),
        (
            "from mlflow import MlflowClient\n\ndef f():\n    client = MlflowClient()\n    client.set_tag('r', 'k', 'v')\n",
            "mlflow.MlflowClient().set_tag",
        ),
        (
            "from mlflow import MlflowClient\n\ndef f():\n    MlflowClient().set_tag('r', 'k', 'v')\n",
            "mlflow.MlflowClient().set_tag",
        ),
        (
            "import mlflow as mf\n\ndef f(mv):\n    mf.MlflowClient().set_model_version_tag(mv, 1, 'k', 'v')\n",
            "mlflow.MlflowClient().set_model_version_tag",
        ),
        ("from mlflow import log_metric\n\ndef f():\n    log_metric('x', 1)\n", "mlflow.log_metric"),
        ("import mlflow\n\ndef f():\n    with mlflow.start_run() as run:\n        pass\n", "mlflow.start_run"),
        (
            "import mlflow\n\ndef f():\n    c = mlflow.MlflowClient()\n    d = c\n    d.log_batch('r')\n",
            "mlflow.MlflowClient().log_batch",
        ),
    ],
)
def test_an_mlflow_write_in_library_code_fails(package_copy, code, offender):
    plant(package_copy, "prep/planted.py", code)
    found = [o for o in mlflow_writes(package_copy) if o.startswith("dolly_spark.prep.planted:")]
    assert len(found) == 1 and found[0].endswith(" " + offender), found


def test_mlflow_reads_and_store_location_are_not_writes(package_copy):
    plant(
        package_copy,
        "prep/planted.py",
        "import mlflow\nfrom mlflow import MlflowClient\n\n"
        "def f(uri):\n"
        "    mlflow.set_tracking_uri(uri)\n"
        "    client = MlflowClient()\n"
        "    client.get_model_version_by_alias('m', 'a')\n"
        "    mlflow.artifacts.download_artifacts(artifact_uri=uri)\n"
        "    return mlflow.pyfunc.load_model(uri)\n",
    )
    plant(package_copy, "tracking/planted.py", "import mlflow\n\ndef f():\n    mlflow.log_metric('x', 1)\n")
    assert mlflow_writes(package_copy) == []


def test_an_import_cycle_fails(package_copy):
    plant(package_copy, "ops/planted_a.py", "from dolly_spark.ops import planted_b\n")
    plant(package_copy, "ops/planted_b.py", "def f():\n    from dolly_spark.ops import planted_a\n")
    cycle = import_cycle(package_copy)
    a, b = "dolly_spark.ops.planted_a", "dolly_spark.ops.planted_b"
    assert cycle[cycle.index(cycle[-1]) :] == [a, b, a]


def test_pyspark_in_train_fails(package_copy):
    plant(package_copy, "train/planted.py", "import pyspark.sql\n")
    _, loaded = pyspark_loaded_by_train(package_copy)
    assert "pyspark.sql" in loaded
