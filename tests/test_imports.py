"""No module of study imports another that imports it back (directly or around a circle)."""

import ast
from pathlib import Path

import study

PACKAGE = Path(study.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The study modules `path` imports at its top level (imports inside functions are left out)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study"):
            names.add(node.module if node.module != "study" else "")
            if node.module == "study":
                names.update(f"study.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("study."))
    return {name for name in names if name and (PACKAGE / f"{name.removeprefix('study.')}.py").exists()}


def test_no_import_cycles():
    graph = {f"study.{path.stem}": imports_of(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    done, stack = set(), []

    def visit(module: str) -> None:
        assert module not in stack, "import cycle: " + " -> ".join([*stack[stack.index(module):], module])
        if module in done:
            return
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_every_report_module_reads_in_one_sitting():
    for name in ("report", "collect", "provenance", "publish", "comparison", "summary", "experiment_reader", "tables"):
        lines = (PACKAGE / f"{name}.py").read_text().count("\n")
        assert lines < 300, f"study/{name}.py has {lines} lines"
