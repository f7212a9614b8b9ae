"""The house as the imports draw it: two wings (tensor_features.lab, tensor_features.trainer) on
shared ground, arrows only from a wing to the ground (or within a wing), none back up, no circle.

The graph is read from the source (ast), not by importing: `python -m tests.tools.test_architecture`
prints it as text, the sketch of the house.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "tensor_features"
GROUND = {"cli", "ranks", "utils", "load_data", "download"}  # shared: they import neither wing
TRAINER_SIDE = {"config", "train", "plots"}  # the trainer's modules the original description places


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (at any depth)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` points at the submodule, not the package.
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                found.update(submodules)
                if len(submodules) < len(node.names):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name and m != "tensor_features"}
    return graph


def room(module: str) -> str:
    """Where a module lives: lab, trainer, or the shared ground."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("lab", "trainer"):
        return parts[1]
    if len(parts) > 1 and parts[1] in TRAINER_SIDE:
        return "trainer"
    return "ground"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_graph_is_read_from_the_real_package():
    # Known arrows and rooms: a rule below cannot pass because the graph came out empty.
    graph = imports()
    assert "tensor_features.ranks" in graph["tensor_features.lab.distributed"]
    assert "tensor_features.ranks" in graph["tensor_features.trainer.data_parallel"]
    assert {room(m) for m in graph} == {"lab", "trainer", "ground"}
    relative = [p for p in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == [], "a relative import would be missed by imports(): write it absolute"


def test_the_trainer_imports_nothing_from_the_lab_wing():
    graph = imports()
    crossing = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if room(a) == "trainer" and room(b) == "lab"]
    assert crossing == []


def test_the_lab_wing_imports_nothing_from_the_trainer():
    graph = imports()
    crossing = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if room(a) == "lab" and room(b) == "trainer"]
    assert crossing == []


def test_the_shared_ground_imports_no_wing():
    graph = imports()
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if room(a) == "ground" and room(b) != "ground"]
    assert upward == []


def test_no_circle():
    assert cycles(imports()) == []


def test_the_package_imports_no_lesson_test_or_bench():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.split(".")[0] in ("tests", "bench") for n in names), path


def sketch() -> str:
    graph = imports()
    lines = []
    for where in ("lab", "trainer", "ground"):
        lines.append(f"[{where}]")
        for module in sorted(m for m in graph if room(m) == where):
            targets = sorted(t.removeprefix("tensor_features.") for t in graph[module])
            lines.append(f"  {module.removeprefix('tensor_features.') or 'tensor_features'}"
                         + (f" -> {', '.join(targets)}" if targets else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(sketch() + "\n")
