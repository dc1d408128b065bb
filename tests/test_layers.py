"""The import graph reads as layers (core/__init__.py draws them): a package imports only from the
layers below it and from itself, the three stages never import each other, and no module imports
itself back through others (no cycles). Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = {  # package -> layer; a package may import packages of a lower layer only
    "core": 0,
    "feast_ext": 1,
    "feature_repo": 2,
    "training": 3, "serving": 3, "monitoring": 3,
    "workflows": 4,
}


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports (absolute, dotted), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in LAYERS}
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in LAYERS for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in project_imports(path):
            while imported not in modules and "." in imported:  # `from pkg import name` of a non-module
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_every_package_imports_only_from_lower_layers():
    upward = [f"{source} imports {target}"
              for source, targets in import_graph().items() for target in targets
              if source.split(".")[0] != target.split(".")[0]
              and LAYERS[target.split(".")[0]] >= LAYERS[source.split(".")[0]]]
    assert upward == []


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]) if target in path else target)
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_the_layer_map_names_every_package(package):
    assert (REPO_ROOT / package / "__init__.py").is_file()


def test_feast_apply_at_the_root_imports_only_the_definitions():
    """`feast apply -c <repo root>` imports every .py file not in .feastignore: a package missing
    there runs at apply time (a `__main__` would even parse feast's own arguments)."""
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".feastignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    folders_with_python = {path.relative_to(REPO_ROOT).parts[0] for path in REPO_ROOT.glob("*/**/*.py")
                           if not path.relative_to(REPO_ROOT).parts[0].startswith(".")}
    assert folders_with_python - ignored == {"feature_repo"}
