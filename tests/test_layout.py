"""The package layout (docs/architecture.md): dependencies point inward,
CLI -> dataflows -> connectors -> operators, with no import circle.

Read from the import statements (all of them, also those inside functions:
a lazy import is still a dependency), not by importing anything.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("operators", "connectors", "dataflows")


def _modules(root: str = ROOT) -> dict[str, str]:
    """Dotted module name -> file path, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for folder, _dirs, files in os.walk(os.path.join(root, pkg)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, name)
    return out


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules its import statements name."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` names the submodule when there is one
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            deps.update(n for n in names if n in modules and n != module)
        graph[module] = deps
    return graph


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def unresolved_imports(root: str = ROOT) -> list[str]:
    """Project imports that name no module and no top-level name of one (a
    module left behind by a move)."""
    modules = _modules(root)
    trees = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            trees[module] = ast.parse(fh.read(), path)
    defined = {m: _top_level_names(t) for m, t in trees.items()}
    bad = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                wanted = [(node.module, a.name) for a in node.names]
            else:
                continue
            for target, name in wanted:
                if target.split(".")[0] not in PACKAGES:
                    continue
                if target not in modules:
                    bad.append(f"{module}: {target}")
                elif name not in (None, "*") and f"{target}.{name}" not in modules and name not in defined[target]:
                    bad.append(f"{module}: {target}.{name}")
    return sorted(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _violations(graph, importer_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if m == importer_prefix
                  or m.startswith(importer_prefix + ".") for d in deps
                  if any(d == f or d.startswith(f + ".") for f in forbidden))


def test_every_project_import_names_a_module_or_a_name_that_exists():
    assert unresolved_imports() == []


def test_no_import_circle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_operators_import_neither_connectors_nor_dataflows():
    assert _violations(import_graph(), "operators", ("connectors", "dataflows")) == []


def test_connectors_never_import_dataflows():
    assert _violations(import_graph(), "connectors", ("dataflows",)) == []


def test_only_the_cli_imports_the_cli():
    outside = {m: deps for m, deps in import_graph().items() if not m.startswith("dataflows.cli")}
    bad = sorted(f"{m} -> {d}" for m, deps in outside.items() for d in deps if d.startswith("dataflows.cli"))
    assert bad == []


def test_the_checker_finds_a_circle_and_a_wrong_direction(tmp_path):
    """The checks above can fail: a planted circle and an inward import are found."""
    for pkg in PACKAGES:
        os.makedirs(tmp_path / pkg)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "operators" / "a.py").write_text("from operators import b\n")
    (tmp_path / "operators" / "b.py").write_text("def f():\n    import operators.c\n")
    (tmp_path / "operators" / "c.py").write_text("from operators.a import x\nfrom connectors.d import y\n")
    (tmp_path / "connectors" / "d.py").write_text("from dataflows.e import z\n")
    (tmp_path / "dataflows" / "e.py").write_text("from connectors import gone\nimport dataflows.f\n")
    graph = import_graph(str(tmp_path))
    assert find_cycle(graph) == ["operators.a", "operators.b", "operators.c", "operators.a"]
    assert _violations(graph, "operators", ("connectors", "dataflows")) == ["operators.c -> connectors.d"]
    assert _violations(graph, "connectors", ("dataflows",)) == ["connectors.d -> dataflows.e"]
    assert unresolved_imports(str(tmp_path)) == [
        "connectors.d: dataflows.e.z", "dataflows.e: connectors.gone", "dataflows.e: dataflows.f",
        "operators.c: connectors.d.y", "operators.c: operators.a.x"]
