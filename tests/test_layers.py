"""The package's layers point one way: commands -> pipelines -> steps -> io.

- library code (everything outside ``dolly_spark.commands``) never imports the commands layer,
  at module level or inside a function;
- only the commands layer logs to MLflow runs;
- ``dolly_spark.train`` (the per-rank code) never loads pyspark, checked by importing every one
  of its modules in a fresh interpreter;
- the import graph, function-level imports counted, is acyclic.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dolly_spark"
# MLflow calls that record into a run: only commands/ may make them.
RUN_LOGGING_CALLS = {
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_dict",
    "log_table",
    "log_artifact",
    "log_artifacts",
    "log_input",
    "set_tag",
    "set_tags",
    "start_run",
    "log_batch",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every dolly_spark module a file imports, including imports inside functions."""
    name = module_name(path)
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


def library_files():
    return [p for p in PACKAGE.rglob("*.py") if "commands" not in p.relative_to(PACKAGE).parts]


def test_library_code_never_imports_the_commands_layer():
    offenders = {
        module_name(p): sorted(m for m in imports_of(p) if m.startswith("dolly_spark.commands"))
        for p in library_files()
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_only_commands_log_to_mlflow_runs():
    offenders = []
    for p in library_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in RUN_LOGGING_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("mlflow", "client")
            ):
                offenders.append(f"{module_name(p)}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert not offenders


def test_the_layer_checks_can_fail(tmp_path):
    bad = tmp_path / "dolly_spark" / "prep" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "def f():\n    from dolly_spark.commands import run\n    import mlflow\n    mlflow.log_metric('x', 1)\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "dolly_spark"
    try:
        assert imports_of(bad) >= {"dolly_spark.commands", "dolly_spark.commands.run"}
        for check in (test_library_code_never_imports_the_commands_layer, test_only_commands_log_to_mlflow_runs):
            try:
                check()
            except AssertionError:
                continue
            raise AssertionError(f"{check.__name__} passed on a violating module")
    finally:
        PACKAGE = saved


def test_import_graph_is_acyclic():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in deps if t in graph and t != m and not m.startswith(t + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_train_package_never_loads_pyspark():
    mods = sorted(module_name(p) for p in (PACKAGE / "train").rglob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k == 'pyspark' or k.startswith('pyspark.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent, timeout=300
    )
    assert len(mods) >= 6
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
