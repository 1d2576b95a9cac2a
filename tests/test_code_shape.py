"""Code a newcomer can change: short functions and files, and comments that cite no tracker numbers.

Each check is a function of a root, so the tests below also run it on a planted copy and see it fail.
"""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dolly_spark"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500
# A number of this project's own tracker ("issue" plus a number): a reader cannot look it up. A public
# tracker named with its repository ("databrickslabs/dolly issue 191", "trl 1076") is fine.
_CITATION = re.compile(r"\b" + "issue" + r"s? #?\d+", re.IGNORECASE)
_PUBLIC_REF = re.compile(r"[\w.-]+/[\w.-]+ issues? #?\d+(?:(?:, | and )\d+)*", re.IGNORECASE)
TEXT_DIRS = ("dolly_spark", "tests", "benchmarks", "tools", "bundles", "docs")
# The only functions that may change os.environ, each restoring what it changed. Per-rank code
# (train/) runs in its own process, started with an environment the launcher built for it.
ENVIRON_WRITERS = {"ops/session.py:scoped_environ", "ops/mlflow_store.py:_set_in_process"}
_ENVIRON_METHODS = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
TEXT_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".sh", ".sql"}


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def long_files(root: Path, limit: int = MAX_FILE_LINES) -> list[str]:
    return [
        f"{p.relative_to(root.parent)} ({n} lines)"
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > limit
    ]


def tracker_citations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            stripped = _PUBLIC_REF.sub("", line)
            if _CITATION.search(stripped):
                found.append(f"{path}:{n}: {line.strip()}")
    return found


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and ast.unparse(node.value) == "os"


def _writes_environ(node: ast.AST) -> bool:
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        return any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        f = node.func
        return (_is_environ(f.value) and f.attr in _ENVIRON_METHODS) or ast.unparse(f) in ("os.putenv", "os.unsetenv")
    return False


def environ_writes(root: Path, allowed: set[str] = ENVIRON_WRITERS) -> list[str]:
    """``file:function:line`` of every write to ``os.environ`` outside ``allowed`` and ``train/``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("train/"):
            continue
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
            name = getattr(fn, "name", "<module>")
            body = fn.body if fn is not tree else [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
            for node in (n for stmt in body for n in ast.walk(stmt)):
                if _writes_environ(node) and f"{rel}:{name}" not in allowed:
                    found.append(f"{rel}:{name}:{node.lineno}")
    return sorted(set(found))


def text_files(repo: Path) -> list[Path]:
    files = [repo / "README.md", repo / "Makefile"]
    for d in TEXT_DIRS:
        files += [p for p in (repo / d).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [p for p in files if p.is_file() and "data" not in p.relative_to(repo).parts[:2]]


def test_no_function_in_the_package_is_over_80_lines():
    assert not long_functions(PACKAGE)


def test_no_module_in_the_package_is_over_500_lines():
    assert not long_files(PACKAGE)


def test_comments_and_docs_cite_no_tracker_numbers():
    assert not tracker_citations(text_files(REPO))


def test_no_command_or_library_function_changes_the_environment():
    assert not environ_writes(PACKAGE)


def test_the_shape_checks_fail_on_a_planted_copy(tmp_path):
    pkg = tmp_path / "dolly_spark"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "long.py").write_text(f"def too_long():\n{body}\n")
    (pkg / "ok.py").write_text("def short():\n    return 1\n")
    assert long_functions(pkg) == ["dolly_spark/long.py:1 too_long (81 lines)"]
    (pkg / "big.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    assert long_files(pkg) == [f"dolly_spark/big.py ({MAX_FILE_LINES + 1} lines)"]
    note = tmp_path / "note.py"
    planted = "# see " + "issue" + " 16 for why"
    note.write_text(f"{planted}\n# fixed upstream: databrickslabs/dolly issue 191\n")
    assert tracker_citations([note]) == [f"{note}:1: {planted}"]
    cmd = pkg / "commands"
    cmd.mkdir()
    (cmd / "run.py").write_text(
        "import os\n\ndef run(cfg):\n    os.environ['DOLLY_TOKENIZER'] = cfg.tokenizer\n"
        "    os.environ.setdefault('X', '1')\n\ndef ok():\n    return os.environ.get('X')\n"
    )
    assert environ_writes(pkg) == ["commands/run.py:run:4", "commands/run.py:run:5"]
