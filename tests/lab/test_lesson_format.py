"""Lesson format v2, read from every lesson's source: what is there only for the tests stays out
of the lesson (returned values, Try oracles, a device keyword on every line), prose explains each
cell as a comment paragraph above it, and no line is wider than 100 columns."""

import ast
import re

import pytest

from tensor_features.lab.lessons import lesson_paths, short_name

WIDTH = 100


def observations(tree: ast.Module) -> list[ast.FunctionDef]:
    """The functions a lesson passes to lab.run (or runs on every rank through on_every_rank)."""
    run = {node.args[0].id for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and node.func.attr == "run" and node.args and isinstance(node.args[0], ast.Name)}
    return [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in run]


def own_returns(function: ast.FunctionDef) -> list[ast.Return]:
    """Return statements of the function itself, not of functions or classes defined inside it."""
    found, stack = [], list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return) and node.value is not None:
            found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_no_line_is_wider_than_100_columns(path):
    wide = [f"{n}: {len(line)}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if len(line) > WIDTH]
    assert wide == [], f"{path.name}: lines over {WIDTH} columns (line: width): {wide}"


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_observations_return_nothing(path):
    tree = ast.parse(path.read_text())
    found = observations(tree)
    assert found, path.name
    returning = [f"{f.name}() line {r.lineno}" for f in found for r in own_returns(f)]
    assert returning == [], f"tests read lab.run(...)'s Seen, not returned values: {returning}"


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_the_device_is_named_only_where_the_default_does_not_reach(path):
    lines = path.read_text().splitlines()
    unexplained = [n for n, line in enumerate(lines, 1) if "device=lab.device" in line
                   and "#" not in line and not lines[n - 2].lstrip().startswith("#")]
    assert unexplained == [], f"{path.name}: device=lab.device without a comment saying why: {unexplained}"


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_each_observation_cell_opens_with_a_comment_paragraph(path):
    lines = path.read_text().splitlines()
    headers = [n for n, line in enumerate(lines) if re.match(r"# %% \[\d+\]", line)]
    assert headers, path.name
    bare = [lines[n] for n in headers if n + 1 >= len(lines) or not lines[n + 1].startswith("# ")]
    assert bare == [], f"{path.name}: cells with no comment paragraph under their title: {bare}"
