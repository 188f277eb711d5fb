"""The package's layers, checked from the source: data flows one way (decode → parse → check →
correlate → rules → spans → export), so no module imports one of a higher layer, and no two
modules import each other (directly or around a loop). Imports inside functions count too: a
lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "processor"

# Lowest first. A module may import its own layer and those below.
LAYERS: dict[str, int] = {
    "__init__": 0, "handoff": 0, "record": 0, "flags": 0, "grammar": 0, "config": 0,
    "sources": 1, "routes": 1,
    "checks": 2, "correlate": 2, "rules": 2,
    "spans": 3, "telemetry": 3,
    "pipeline": 4,
    "completeness": 5, "replay": 5, "doctor": 5,
    "otlp": 6, "admin": 6,
    "serve": 7,
    "cli": 8, "demo": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for candidate in (target, *(f"{target}.{a.name}" for a in node.names)):
                if candidate in modules and candidate != name:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules and a.name != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    area = parts[1] if len(parts) > 1 else "__init__"
    assert area in LAYERS, f"{module}: its area {area!r} has no layer in tests/test_layers.py"
    return area, LAYERS[area]


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for module, targets in _graph().items():
        area, layer = _layer(module)
        for target in targets:
            target_area, target_layer = _layer(target)
            if target_area != area and target_layer > layer:
                upward.append(f"{module} → {target}")
    assert not upward, "imports that run back up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" → ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_imports() -> None:
    """The graph is not empty by mistake: known edges are found, lazy imports included."""
    graph = _graph()
    assert "processor.pipeline" in graph["processor.otlp.server"]
    assert "processor.serve" in graph["processor.cli"]  # imported inside _serve
