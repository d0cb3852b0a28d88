"""The package's architecture, kept by tests: core <- train <- sweep -> report -> core.

A wing imports another only through that wing's `__init__` (its public surface); the report wing
never imports the trainer or the sweep and loads neither torch nor Ray; the train wing loads no Ray;
no module imports another that imports it back; no module is longer than one sitting.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import study

PACKAGE = Path(study.__file__).parent
CORE = {
    "study",
    "study.config",
    "study.labels",
    "study.loading",
    "study.metrics",
    "study.errors",
    "study.redact",
    "study.storage",
    "study.tables",
}
WINGS = ("train", "sweep", "report")
# Which wings each part may import (core is open to all). bench times the trainer.
ALLOWED = {"core": set(), "train": set(), "sweep": {"train", "report"}, "report": set(), "bench": {"train"}}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(name: str) -> str:
    """core, one of the wings, or bench."""
    if name in CORE:
        return "core"
    wing = name.split(".")[1]
    return wing if wing in WINGS or wing == "bench" else "unknown"


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """The study modules `path` imports (`from study.x import y` counts y when it is a module)."""
    known = modules()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "study":
            names.add(node.module)
            names.update(
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known
            )
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "study")
    return names


def test_every_module_belongs_to_the_core_a_wing_or_the_bench():
    assert {name: part_of(name) for name in modules() if part_of(name) == "unknown"} == {}


def test_wings_import_each_other_only_as_the_rule_allows_and_only_through_their_public_surface():
    wrong = []
    for name, path in modules().items():
        mine = part_of(name)
        for imported in imports_of(path):
            theirs = part_of(imported)
            if theirs in ("core", mine):
                continue
            if theirs not in ALLOWED[mine]:
                wrong.append(f"{name} imports {imported}: {mine} may not import {theirs}")
            elif imported != f"study.{theirs}":
                wrong.append(f"{name} imports {imported}: from another wing, import its surface study.{theirs}")
    assert wrong == []


def test_the_core_imports_no_wing():
    for name, path in modules().items():
        if part_of(name) == "core":
            assert {part_of(i) for i in imports_of(path)} <= {"core"}, name


def loaded_after_importing(modules_to_import: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules_to_import!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_report_wing_loads_neither_torch_nor_ray():
    report = [name for name in modules() if part_of(name) == "report" and not name.endswith("__main__")]
    loaded = loaded_after_importing(report)
    assert "pandas" in loaded  # the check sees what a module loads
    assert not {"torch", "ray"} & loaded


def test_the_train_wing_loads_no_ray():
    train = [name for name in modules() if part_of(name) == "train" and not name.endswith("__main__")]
    loaded = loaded_after_importing(train)
    assert "torch" in loaded
    assert "ray" not in loaded


def test_no_import_cycles():
    graph = {name: imports_of(path, top_level_only=True) & set(modules()) for name, path in modules().items()}
    done, stack = set(), []

    def visit(module: str) -> None:
        assert module not in stack, "import cycle: " + " -> ".join([*stack[stack.index(module) :], module])
        if module in done:
            return
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            # a package's __init__ importing its own modules is how a surface is made, not a cycle
            if not (imported.startswith(module + ".") and modules()[module].name == "__init__.py"):
                visit(imported)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above would fail on a real cycle (two modules of a fake package importing each other)."""
    fake = tmp_path / "study"
    (fake / "train").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "train" / "__init__.py").write_text("")
    (fake / "train" / "a.py").write_text("from study.train.b import x\n")
    (fake / "train" / "b.py").write_text("from study.train.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_reads_in_one_sitting(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines, more than {MAX_LINES}"
