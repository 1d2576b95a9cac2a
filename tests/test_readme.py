"""The README stays true: its Layout lists every subpackage and module (and nothing that is gone),
and every benchmark figure it quotes is one that benchmarks/README.md records."""

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_ENTRY = re.compile(r"^  (\w+)/\s")
_FIGURE = re.compile(r"\d[\d,.]*\s?(?:×|x\b|%|GiB|MiB|GB|min\b|s\b)")


def section(text: str, heading: str) -> str:
    """The body of ``## heading`` up to the next ``## ``."""
    start = text.index(f"## {heading}\n") + len(heading) + 4
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def layout_entries(readme: str) -> dict[str, str]:
    """``package -> its text`` from the Layout section's code block (an entry runs to the next one)."""
    block = section(readme, "Layout").split("```")[1]
    entries: dict[str, list[str]] = {}
    current = None
    for line in block.splitlines():
        m = _ENTRY.match(line)
        if m:
            current = m.group(1)
            entries[current] = [line[m.end() :]]
        elif current and line.startswith("   "):
            entries[current].append(line)
        else:
            current = None
    return {k: " ".join(v) for k, v in entries.items()}


def layout_problems(readme: str, package: Path) -> list[str]:
    entries = layout_entries(readme)
    problems = []
    subpackages = sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__")
    for sub in subpackages:
        if sub not in entries:
            problems.append(f"{sub}/ is not in the Layout")
            continue
        words = set(re.findall(r"[A-Za-z_]\w*", entries[sub]))
        for module in sorted(p.stem for p in (package / sub).glob("*.py") if p.stem != "__init__"):
            if module not in words:
                problems.append(f"{sub}/{module}.py is not in the Layout")
    for sub in sorted(set(entries) - set(subpackages)):
        problems.append(f"the Layout lists {sub}/, which is not a folder of the package")
    return problems


def figure_problems(readme: str, benchmarks_readme: str) -> list[str]:
    quoted = _FIGURE.findall(section(readme, "Benchmarks"))
    return [
        f"README quotes {f!r}, which benchmarks/README.md does not record" for f in quoted if f not in benchmarks_readme
    ]


def test_the_layout_lists_every_subpackage_and_module():
    assert not layout_problems((REPO / "README.md").read_text(), REPO / "dolly_spark")


def test_the_readme_benchmark_figures_come_from_benchmarks_readme():
    readme = (REPO / "README.md").read_text()
    assert _FIGURE.findall(section(readme, "Benchmarks")), "the section quotes no figure: nothing was checked"
    assert not figure_problems(readme, (REPO / "benchmarks" / "README.md").read_text())


def test_the_readme_checks_fail_on_a_broken_copy(tmp_path):
    readme = (REPO / "README.md").read_text()
    pkg = tmp_path / "dolly_spark"
    for sub in layout_entries(readme):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "prep" / "brand_new_stage.py").write_text("")
    (pkg / "newpkg").mkdir()
    (pkg / "newpkg" / "__init__.py").write_text("")
    problems = layout_problems(readme, pkg)
    assert "prep/brand_new_stage.py is not in the Layout" in problems
    assert "newpkg/ is not in the Layout" in problems
    gone = sorted(layout_entries(readme))[0]
    shutil.rmtree(pkg / gone)
    assert f"the Layout lists {gone}/, which is not a folder of the package" in layout_problems(readme, pkg)
    doctored = readme.replace("## Benchmarks", "## Benchmarks\n\nprepare got 99.99× faster\n", 1)
    assert "README quotes '99.99×', which benchmarks/README.md does not record" in figure_problems(
        doctored, (REPO / "benchmarks" / "README.md").read_text()
    )
