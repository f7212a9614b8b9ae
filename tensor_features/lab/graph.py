"""The graph lens: the real autograd graph behind a tensor, read from its `grad_fn`, as text, as
Graphviz DOT, and as SVG; and what changed between two readings.

    graph = read_graph(loss, names={"x": x, "w": w})
    print(graph.text())            # an indented tree, one line per node
    graph.dot(), graph.svg()       # the same graph as a picture
    loss.backward()
    after = read_graph(loss, names={"x": x, "w": w})
    print(diff(graph, after).text())   # the saved tensors, freed
    diff_svg(graph, after)             # both readings side by side, what changed marked

What is read is what backward() walks: each `torch.autograd.graph.Node` (`name()`,
`next_functions`), the `AccumulateGrad` node of each leaf with its `.variable`, the tensors a node
saved for backward (its `_saved_*` attributes: shape, dtype, bytes, or "freed" once backward()
released them, or "modified in place" once an in-place op bumped their version, or "packed by a
hook" under saved_tensors_hooks or checkpointing, read without calling the unpack hook), and the
`None` edges of inputs that need no gradient. Node ids are n0, n1, ... in walk order (depth first, inputs
in `next_functions` order), so two readings of the same structure give the same ids and the same
text, unlike `id()`-based names.

A reading is a snapshot of plain values: it holds no tensor and no node, so keeping a Graph keeps
no tensor, storage or autograd node alive. Leaves and saved tensors are named by identity (`is`)
to the caller's `names`; tensors of at most SMALL elements (strided, not on the meta device)
carry their values (and a leaf its .grad's values).

read_engine reads a micrograd-style scalar engine's own objects (lesson 02's Value) into the same
records, so that its graph is drawn by the same lens.

Hooks: a leaf's own hooks (`register_hook`, `register_post_accumulate_grad_hook`) are counted; hooks
registered on a node (`Node.register_hook`) live in C++ and are not readable from Python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tensor_features.lab.values import format_value

SMALL = 4  # tensors of at most this many elements show their values
PROGRAM = "graphviz-pure"  # a pip wheel: Graphviz's dot ported to Rust, no system Graphviz needed
INSTALL_HINT = f"pip install {PROGRAM}"

HELD, FREED, MODIFIED, PACKED = "held", "freed", "modified in place", "packed by a hook"


class RendererMissing(RuntimeError):
    """The graphviz-pure program that draws SVG is not installed; the message says how to get it."""


@dataclass(frozen=True)
class TensorInfo:
    """What a tensor was when read: shape, dtype, bytes (numel × element_size), the caller's name
    for it, and its values (flattened) when it has at most SMALL elements."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    name: str | None = None
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Saved:
    """A tensor a node saved for backward, the attribute `_saved_<slot>`: state is "held",
    "freed" (backward() released it), "modified in place" (its version moved since it was
    saved) or "packed by a hook" (tensor: what the pack hook returned, when it is a tensor);
    tensor is None when it can no longer be read."""

    slot: str
    state: str
    tensor: TensorInfo | None = None


@dataclass(frozen=True)
class Leaf:
    """The leaf an AccumulateGrad node adds into: the tensor, its `_version`, its .grad, and how
    many hooks are registered on it."""

    tensor: TensorInfo
    version: int = 0
    grad: TensorInfo | None = None
    hooks: int = 0


@dataclass(frozen=True)
class Node:
    """One node of the backward graph: `inputs` are the ids of its next_functions, None for an
    input that needs no gradient; `leaf` is set for AccumulateGrad nodes. `value` and `grad` are
    set only by read_engine, for an op: the number it computed and the gradient it holds (torch
    keeps neither on a grad_fn node)."""

    id: str
    name: str
    inputs: tuple[str | None, ...] = ()
    saved: tuple[Saved, ...] = ()
    leaf: Leaf | None = None
    value: TensorInfo | None = None
    grad: TensorInfo | None = None


@dataclass(frozen=True)
class Edge:
    """An edge source -> target (None: an input that needs no gradient), the slot-th input."""

    source: str
    slot: int
    target: str | None


@dataclass(frozen=True)
class Graph:
    """A reading of the backward graph: the output and the nodes in walk order (nodes[0] is the
    output's grad_fn; no nodes when the output has no grad_fn)."""

    output: TensorInfo
    requires_grad: bool
    nodes: tuple[Node, ...]

    def node(self, node_id: str) -> Node:
        """The node with this id."""
        position = int(node_id[1:]) if node_id[1:].isdigit() else -1
        if 0 <= position < len(self.nodes) and self.nodes[position].id == node_id:
            return self.nodes[position]  # read_graph's ids are positions: no scan on deep graphs
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in walk order."""
        return tuple(Edge(node.id, slot, target) for node in self.nodes
                     for slot, target in enumerate(node.inputs))

    def text(self) -> str:
        """An indented tree, one line per node; a node reached again is referenced by its id."""
        lines = [_titled("output", self.output)]
        if not self.nodes:
            why = ("a leaf: backward() adds straight into its .grad" if self.requires_grad
                   else "it does not require grad, so no graph was recorded")
            return "\n".join(lines + [f"  no grad_fn: {why}"])
        shown: set[str] = set()
        stack: list[tuple[str | None, int]] = [(self.nodes[0].id, 1)]
        while stack:  # a stack, not recursion: a long chain of ops is a deep graph
            node_id, depth = stack.pop()
            indent = "  " * depth
            if node_id is None:
                lines.append(f"{indent}None  (needs no gradient)")
            elif node_id in shown:
                lines.append(f"{indent}{node_id} (above)")
            else:
                shown.add(node_id)
                node = self.node(node_id)
                lines.append(indent + _node_line(node))
                stack.extend((target, depth + 1) for target in reversed(node.inputs))
        return "\n".join(lines)

    def dot(self) -> str:
        """Graphviz DOT: edges point the way backward() walks, from the output to the leaves."""
        return "\n".join([*_DOT_HEAD, *_dot_body(self), "}"]) + "\n"

    def svg(self) -> str:
        """The DOT drawn as SVG by graphviz-pure; RendererMissing when it is not installed."""
        return _render(self.dot())


@dataclass(frozen=True)
class SavedChange:
    """A saved tensor whose state changed ("held" -> "freed", "held" -> "modified in place",
    "held" -> "packed by a hook")."""

    node: str
    name: str
    slot: str
    before: str
    after: str


@dataclass(frozen=True)
class VersionBump:
    """A leaf whose `_version` moved: an in-place op wrote into it."""

    node: str
    name: str | None
    before: int
    after: int


@dataclass(frozen=True)
class SavedResize:
    """A saved slot whose tensor has another shape or dtype in the same state (batch norm's
    batch statistics, empty in eval mode), or that exists in one reading only (None there)."""

    node: str
    name: str
    slot: str
    before: TensorInfo | None
    after: TensorInfo | None


@dataclass(frozen=True)
class GradChange:
    """A leaf whose .grad changed (None -> a gradient after backward(), or other values)."""

    node: str
    name: str | None
    before: TensorInfo | None
    after: TensorInfo | None


@dataclass(frozen=True)
class GraphDiff:
    """What changed between two readings. Removed nodes and edges carry the ids of the reading
    before, added ones the ids of the reading after; the changes of matched nodes (saved tensors,
    versions, grads) the ids before. `before` and `after` are the two readings (their names for
    the ids in text())."""

    removed: tuple[Node, ...] = ()
    added: tuple[Node, ...] = ()
    edges_removed: tuple[Edge, ...] = ()
    edges_added: tuple[Edge, ...] = ()
    saved: tuple[SavedChange, ...] = ()
    versions: tuple[VersionBump, ...] = ()
    resized: tuple[SavedResize, ...] = ()
    grads: tuple[GradChange, ...] = ()
    before: Graph | None = field(default=None, repr=False, compare=False)
    after: Graph | None = field(default=None, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        """True when nothing changed: same nodes and edges, same saved tensors (state, shape,
        dtype), same leaf versions and grads."""
        return not (self.removed or self.added or self.edges_removed or self.edges_added
                    or self.saved or self.versions or self.resized or self.grads)

    def text(self) -> str:
        """One line per change, or one line saying nothing changed."""
        if self.empty:
            return ("no change: same nodes, same edges, saved tensors, leaf versions and grads "
                    "as before")
        lines = [f"removed {n.id} {n.name}" for n in self.removed]
        lines += [f"added {n.id} {n.name}" for n in self.added]
        lines += [f"removed edge {_edge_text(e, self.before)}" for e in self.edges_removed]
        lines += [f"added edge {_edge_text(e, self.after)}" for e in self.edges_added]
        lines += [f"{c.node} {c.name} saved {c.slot}: {c.before} -> {c.after}" for c in self.saved]
        lines += [f"{r.node} {r.name} saved {r.slot}: {_size_text(r.before)} -> "
                  f"{_size_text(r.after)}" for r in self.resized]
        lines += [f"{v.node} leaf {v.name + ' ' if v.name else ''}version {v.before} -> {v.after}"
                  for v in self.versions]
        lines += [f"{g.node} leaf {g.name + ' ' if g.name else ''}grad {_grad_text(g.before)} -> "
                  f"{_grad_text(g.after)}" for g in self.grads]
        return "\n".join(lines)


def read_graph(output: torch.Tensor, names: dict[str, torch.Tensor] | None = None) -> Graph:
    """Read the graph behind `output` from its grad_fn; `names` names tensors by identity."""
    known = list((names or {}).items())
    order: list[Any] = []
    ids: dict[Any, str] = {}  # holding each node object keeps its identity for the whole walk
    stack = [output.grad_fn] if output.grad_fn is not None else []
    while stack:  # depth first, inputs in next_functions order: the ids are the walk order
        function = stack.pop()
        if function in ids:
            continue
        ids[function] = f"n{len(ids)}"
        order.append(function)
        stack.extend(f for f, _ in reversed(function.next_functions) if f is not None)
    nodes = tuple(_read_node(f, ids, known) for f in order)
    return Graph(_info(output, known), output.requires_grad, nodes)


def diff(before: Graph, after: Graph) -> GraphDiff:
    """What changed from one reading to the next: nodes matched by walking both graphs together
    from the output (same name at the same input), so a cut branch is one removal, not a shift."""
    pairs = _match(before, after)
    matched_after = set(pairs.values())
    kept = {_carried(e, pairs) for e in before.edges() if e.source in pairs}
    after_edges = {(e.source, e.slot, e.target) for e in after.edges()}
    saved, versions, resized, grads = [], [], [], []
    for old_id, new_id in pairs.items():
        old, new = before.node(old_id), after.node(new_id)
        for item in old.saved:
            state = _state_of(new, item.slot)
            if state is not None and state != item.state:
                saved.append(SavedChange(old_id, old.name, item.slot, item.state, state))
        resized += _resized(old, new)
        if old.leaf and new.leaf and new.leaf.version != old.leaf.version:
            versions.append(VersionBump(old_id, old.leaf.tensor.name, old.leaf.version,
                                        new.leaf.version))
        if old.leaf and new.leaf and _grad_text(old.leaf.grad) != _grad_text(new.leaf.grad):
            grads.append(GradChange(old_id, old.leaf.tensor.name, old.leaf.grad, new.leaf.grad))
    return GraphDiff(
        removed=tuple(n for n in before.nodes if n.id not in pairs),
        added=tuple(n for n in after.nodes if n.id not in matched_after),
        edges_removed=tuple(e for e in before.edges()
                            if e.source not in pairs or _carried(e, pairs) not in after_edges),
        edges_added=tuple(e for e in after.edges() if (e.source, e.slot, e.target) not in kept),
        saved=tuple(saved), versions=tuple(versions), resized=tuple(resized), grads=tuple(grads),
        before=before, after=after)


def diff_dot(before: Graph, after: Graph) -> str:
    """The two readings side by side in one DOT picture: a cluster "before" and a cluster "after",
    each drawn as Graph.dot draws it, its ids prefixed b_ and a_. What diff() found is marked:
    a removed node has a red border and a "removed" line (in "before"), an added one a green
    border and an "added" line (in "after"), removed and added edges are red and green, a saved
    tensor whose state changed keeps its new state's look and says what it was, as does one
    resized ("was shape ..."; a slot gone is red in "before"), a leaf whose version moved says
    "version A -> B", and one whose grad changed "grad was G". When nothing changed the picture
    says "no change"."""
    changes = diff(before, after)
    pairs = _match(before, after)
    before_marks = {node.id: _Mark(("removed",), _REMOVED) for node in changes.removed}
    after_marks = {node.id: _Mark(("added",), _ADDED) for node in changes.added}
    for change in changes.saved:
        new = after.node(pairs[change.node])
        for saved in new.saved:  # "tensors[0]", once freed, is read back as one slot, "tensors"
            if saved.slot in (change.slot, change.slot.split("[")[0]):
                after_marks[f"{new.id}_{_dot_safe(saved.slot)}"] = _Mark((f"was {change.before}",))
    for bump in changes.versions:
        _add_mark(after_marks, pairs[bump.node],
                  _Mark(version=f"version {bump.before} -> {bump.after}"))
    for grad in changes.grads:
        _add_mark(after_marks, pairs[grad.node], _Mark((f"grad was {_grad_text(grad.before)}",)))
    for resize in changes.resized:
        if resize.after is not None:
            _add_mark(after_marks, f"{pairs[resize.node]}_{_dot_safe(resize.slot)}",
                      _Mark((f"was {_size_text(resize.before)}",)))
        else:
            _add_mark(before_marks, f"{resize.node}_{_dot_safe(resize.slot)}",
                      _Mark(("gone",), _REMOVED))
    lines = ["digraph autograd_diff {", _NODE_FONT]
    for title, graph, marks, edges, look in (
            ("before", before, before_marks, changes.edges_removed, _REMOVED_EDGE),
            ("after", after, after_marks, changes.edges_added, _ADDED_EDGE)):
        edge_looks = {(edge.source, edge.slot): look for edge in edges}
        lines += [f"  subgraph cluster_{title} {{", f'    label="{title}";',
                  *_dot_body(graph, title[0] + "_", "    ", marks, edge_looks), "  }"]
    if changes.empty:
        lines.append('  label="no change";')  # after the clusters: they keep their own labels
    return "\n".join(lines + ["}"]) + "\n"


def diff_svg(before: Graph, after: Graph) -> str:
    """diff_dot drawn as SVG by graphviz-pure; RendererMissing when it is not installed."""
    return _render(diff_dot(before, after))


def read_engine(output: Any, names: dict[str, Any] | None = None) -> Graph:
    """Read the graph of a micrograd-style scalar engine (lesson 02's Value) from its own objects.

    The protocol: each object has `.data` (a float), `.grad` (a float), `.name` (a str: the op
    that made it, or an input's name) and `.parents` (a tuple of objects of the same kind, empty
    for an input). A Value with parents becomes an op node named by its `.name` ("+", "*",
    "**2", "tanh"), its inputs its parents' ids in order, with its `value` and `grad`; a Value
    without parents becomes a leaf node "input" whose tensor is a float64 scalar (a Python float
    is an IEEE double) named by its `.name`, with its data and its grad. Ids are n0, n1, ... in
    the walk order of read_graph; a Value reached twice is one node (by identity). `names` names
    the output and the inputs by identity, before their `.name`. There is no None edge: lesson
    02's engine wraps the 2 of 2 * x as a Value, an input with a gradient of its own, where torch
    draws a None edge.
    """
    known = list((names or {}).items())
    order: list[Any] = []
    ids: dict[int, str] = {}  # by id(): `order` holds each Value, so no id is reused in the walk
    stack = [output]
    while stack:
        value = stack.pop()
        if id(value) in ids:
            continue
        ids[id(value)] = f"n{len(ids)}"
        order.append(value)
        stack.extend(reversed(value.parents))
    nodes = []
    for value in order:
        name = next((n for n, v in known if v is value), None)
        if value.parents:
            nodes.append(Node(ids[id(value)], value.name,
                              tuple(ids[id(parent)] for parent in value.parents),
                              value=_float_info(value.data), grad=_float_info(value.grad)))
        else:
            leaf = Leaf(_float_info(value.data, name or value.name or None),
                        grad=_float_info(value.grad))
            nodes.append(Node(ids[id(value)], "input", leaf=leaf))
    return Graph(_float_info(output.data, next((n for n, v in known if v is output), None)),
                 True, tuple(nodes))


def renderer() -> Path:
    """Where graphviz-pure is: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent
    for name in (PROGRAM, PROGRAM + ".exe"):
        if (beside / name).is_file():
            return beside / name
    found = shutil.which(PROGRAM)
    if found is None:
        raise RendererMissing(f"{PROGRAM} is not installed (it draws the graph as SVG): "
                              f"{INSTALL_HINT}")
    return Path(found)


# ---------------------------------------------------------------------------- reading


def _read_node(function: Any, ids: dict[Any, str], known: list[tuple[str, torch.Tensor]]) -> Node:
    inputs = tuple(ids[f] if f is not None else None for f, _ in function.next_functions)
    # "torch::autograd::AccumulateGrad" -> "AccumulateGrad", as type(node).__name__ says it.
    name = function.name().rsplit("::", 1)[-1]
    leaf = None
    variable = getattr(function, "variable", None)
    if isinstance(variable, torch.Tensor):
        hooks = (len(getattr(variable, "_backward_hooks", None) or {})
                 + len(getattr(variable, "_post_accumulate_grad_hooks", None) or {}))
        grad = variable.grad
        leaf = Leaf(_info(variable, known), variable._version,
                    _info(grad, []) if grad is not None else None, hooks)
    return Node(ids[function], name, inputs, _read_saved(function, known), leaf)


def _read_saved(function: Any, known: list[tuple[str, torch.Tensor]]) -> tuple[Saved, ...]:
    attributes = set(dir(function))
    found = []
    # A saved tensor has a raw twin, `_raw_saved_<slot>`; numbers saved beside it (an exponent,
    # an alpha, sizes) have none. A custom Function's tensors are read as `saved_tensors`.
    for raw in sorted(a for a in attributes if a.startswith("_raw_saved_")):
        slot = raw.removeprefix("_raw_saved_")
        attribute = f"_saved_{slot}" if f"_saved_{slot}" in attributes else f"saved_{slot}"
        if attribute not in attributes:
            continue
        try:
            packed = _packed(getattr(function, raw), slot, known)
        except RuntimeError:  # a custom Function's list of saved tensors, released by backward()
            packed = None
        if packed is not None:  # reading `_saved_*` would call the unpack hook: read the raw one
            found += packed
            continue
        try:
            value = getattr(function, attribute)
        except RuntimeError as error:  # released by backward(), or stale after an in-place op
            state = MODIFIED if "modified by an inplace operation" in str(error) else FREED
            found.append(Saved(slot, state))
            continue
        if isinstance(value, torch.Tensor):
            found.append(Saved(slot, HELD, _info(value, known)))
        elif isinstance(value, (list, tuple)):
            found += [Saved(f"{slot}[{i}]", HELD, _info(t, known))
                      for i, t in enumerate(value) if isinstance(t, torch.Tensor)]
        # None: the slot exists but this call did not need it (e.g. 2 * x does not keep x: only
        # x's factor, the 2, is needed)
    return tuple(found)


def _packed(raw: Any, slot: str, known: list[tuple[str, torch.Tensor]]) -> list[Saved] | None:
    """The slots of a raw saved tensor (or a list of them) whose pack hook ran (saved_tensors_hooks,
    checkpointing): what the hook returned, read without calling the unpack hook, which may run
    code (checkpointing reruns the forward). None when no hook is set: read `_saved_*` as usual."""
    items = list(enumerate(raw)) if isinstance(raw, (list, tuple)) else [(None, raw)]
    if not any(getattr(item, "unpack_hook", None) is not None for _, item in items):
        return None
    found = []
    for index, item in items:
        name = slot if index is None else f"{slot}[{index}]"
        if getattr(item, "unpack_hook", None) is None:  # not packed (a list may mix): as it is
            content = getattr(item, "data", None)
            found.append(Saved(name, HELD, _info(content, known)) if isinstance(
                content, torch.Tensor) else Saved(name, FREED))
            continue
        content = item.data  # what the pack hook returned: a tensor, or a placeholder
        tensor = _info(content, known) if isinstance(content, torch.Tensor) else None
        found.append(Saved(name, PACKED, tensor))
    return found


def _info(tensor: torch.Tensor, known: list[tuple[str, torch.Tensor]]) -> TensorInfo:
    name = next((n for n, t in known if t is tensor), None)
    values = None
    if tensor.numel() <= SMALL and tensor.layout == torch.strided and tensor.device.type != "meta":
        values = tuple(tensor.detach().reshape(-1).tolist())
    return TensorInfo(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                      tensor.numel() * tensor.element_size(), name, values)


def _float_info(number: float, name: str | None = None) -> TensorInfo:
    """A Python float as a tensor would be read: a float64 scalar of 8 bytes."""
    return TensorInfo((), "float64", 8, name, (float(number),))


# ---------------------------------------------------------------------------- showing


def _render(dot: str) -> str:
    """DOT drawn as SVG by graphviz-pure; RendererMissing when it is not installed."""
    program = renderer()
    done = subprocess.run([str(program), "-Tsvg"], input=dot, capture_output=True,
                          text=True, encoding="utf-8", timeout=60, check=False)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise RuntimeError(f"{PROGRAM} failed (exit {done.returncode}): {first}")
    return done.stdout


def _shown_values(info: TensorInfo) -> str:
    """The values as the tensor's shape nests them: 3.0, [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]]."""
    assert info.values is not None
    nested: Any = list(info.values)
    for size in reversed(info.shape[1:]):
        nested = [nested[i:i + size] for i in range(0, len(nested), size)]
    return format_value(nested[0] if info.shape == () else nested)


def _about(info: TensorInfo) -> str:
    text = f"shape {info.shape}, {info.dtype}, {info.nbytes} bytes"
    return text + (f", value {_shown_values(info)}" if info.values is not None else "")


def _titled(title: str, info: TensorInfo) -> str:
    return f"{title}{' ' + info.name if info.name else ''} ({_about(info)})"


def _grad_text(grad: TensorInfo | None) -> str:
    if grad is None:
        return "None"
    return _shown_values(grad) if grad.values is not None else f"shape {grad.shape}"


def _node_line(node: Node) -> str:
    if node.leaf is not None:
        leaf = node.leaf
        line = f"{node.id} {node.name}  {_titled('leaf', leaf.tensor)}"
        line += f", grad {_grad_text(leaf.grad)}"
        if leaf.version:
            line += f", version {leaf.version}"
        if leaf.hooks:
            line += f", {leaf.hooks} hook{'s' if leaf.hooks > 1 else ''}"
        return line
    line = f"{node.id} {node.name}"
    if node.value is not None:  # an engine's op (read_engine): the number it holds, its gradient
        line += f"  value {_shown_values(node.value)}, grad {_grad_text(node.grad)}"
    if node.saved:
        line += "  saved " + "; ".join(_saved_text(s) for s in node.saved)
    return line


def _saved_text(saved: Saved) -> str:
    if saved.tensor is None:
        return f"{saved.slot} ({saved.state})"
    name = f" = {saved.tensor.name}" if saved.tensor.name else ""
    state = f"{saved.state}: " if saved.state != HELD else ""
    return f"{saved.slot}{name} ({state}{_about(saved.tensor)})"


def _edge_text(edge: Edge, graph: Graph | None = None) -> str:
    """n1 AddmmBackward0 -> n3 MulBackward0 (input 1): ids with the reading's names, where known
    (ids are walk positions, so one id may name another node in the other reading)."""
    def named(node_id: str | None) -> str:
        if node_id is None:
            return "None"
        try:
            return f"{node_id} {graph.node(node_id).name}" if graph is not None else node_id
        except KeyError:
            return node_id
    return f"{named(edge.source)} -> {named(edge.target)} (input {edge.slot})"


def _size_text(info: TensorInfo | None) -> str:
    return "none" if info is None else f"shape {info.shape} {info.dtype}, {info.nbytes} bytes"


_NODE_FONT = '  node [fontname="Helvetica" fontsize=11];'
_DOT_HEAD = ("digraph autograd {", _NODE_FONT)
_REMOVED, _ADDED = " color=red penwidth=2", " color=green3 penwidth=2"
_REMOVED_EDGE, _ADDED_EDGE = "color=red", "color=green3"


@dataclass(frozen=True)
class _Mark:
    """What a diff picture adds to one drawn node: lines under its label, attributes after its
    look, and the line that replaces a leaf's version line."""

    lines: tuple[str, ...] = ()
    look: str = ""
    version: str | None = None


def _add_mark(marks: dict[str, _Mark], node_id: str, mark: _Mark) -> None:
    """Put mark on node_id, keeping what is already marked there (a leaf whose version and grad
    both moved)."""
    old = marks.get(node_id, _Mark())
    marks[node_id] = _Mark(old.lines + mark.lines, old.look + mark.look,
                           mark.version if mark.version is not None else old.version)


def _dot_body(graph: Graph, prefix: str = "", indent: str = "  ",
              marks: dict[str, _Mark] | None = None,
              edge_looks: dict[tuple[str, int], str] | None = None) -> list[str]:
    """The nodes and edges of Graph.dot, each id prefixed (a diff draws two readings in one
    picture); marks (by node id, unprefixed) and edge_looks (by source and slot) show changes."""
    marks, edge_looks = marks or {}, edge_looks or {}

    def drawn(node_id: str, label: list[str], look: str) -> str:
        mark = marks.get(node_id, _Mark())
        return indent + _dot_node(prefix + node_id, [*label, *mark.lines], look + mark.look)

    def arrow(source: str, target: str, look: str = "") -> str:
        attributes = f" [{look}]" if look else ""
        return f"{indent}{prefix}{source} -> {prefix}{target}{attributes};"

    lines = [drawn("out", _output_label(graph.output),
                   "shape=box style=filled fillcolor=darkolivegreen1")]
    if graph.nodes:
        lines.append(arrow("out", graph.nodes[0].id))
    for node in graph.nodes:
        if node.leaf is not None:
            label = _leaf_label(node, marks.get(node.id, _Mark()).version)
            lines.append(drawn(node.id, label, "shape=box style=filled fillcolor=lightblue"))
        else:
            lines.append(drawn(node.id, [f"{node.id} {node.name}", *_value_lines(node)],
                               "shape=ellipse style=filled fillcolor=lightgrey"))
        for saved in node.saved:
            saved_id = f"{node.id}_{_dot_safe(saved.slot)}"
            lines.append(drawn(saved_id, _saved_label(saved), _SAVED_LOOK[saved.state]))
            lines.append(arrow(node.id, saved_id, "style=dashed arrowhead=none"))
        for slot, target in enumerate(node.inputs):
            changed = edge_looks.get((node.id, slot), "")
            # A None input is drawn (torchviz's make_dot skips it): the input needs no gradient.
            if target is None:
                none_id = f"{node.id}_in{slot}"
                lines.append(drawn(none_id, ["None"], "shape=plaintext fontcolor=grey"))
                lines.append(arrow(node.id, none_id, " ".join(filter(None, ["style=dotted",
                                                                            changed]))))
            else:
                lines.append(arrow(node.id, target, changed))
    return lines


_SAVED_LOOK = {
    HELD: "shape=note style=filled fillcolor=orange",
    FREED: "shape=note style=dashed color=grey fontcolor=grey",
    MODIFIED: "shape=note style=\"filled,dashed\" fillcolor=mistyrose color=red",
    PACKED: "shape=note style=\"filled,dotted\" fillcolor=lightyellow color=goldenrod",
}


def _dot_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text)


def _dot_node(node_id: str, label: list[str], look: str) -> str:
    escaped = "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in label)
    return f'{node_id} [label="{escaped}" {look}];'


def _shape_line(info: TensorInfo) -> str:
    return f"shape {info.shape} {info.dtype}"


def _output_label(info: TensorInfo) -> list[str]:
    label = [f"output{' ' + info.name if info.name else ''}", _shape_line(info)]
    return label + ([f"value {_shown_values(info)}"] if info.values is not None else [])


def _value_lines(node: Node) -> list[str]:
    if node.value is None:
        return []
    return [f"value {_shown_values(node.value)}", f"grad {_grad_text(node.grad)}"]


def _leaf_label(node: Node, version: str | None = None) -> list[str]:
    """version, when given, replaces the leaf's own version line (a diff's "version 0 -> 1")."""
    assert node.leaf is not None
    leaf = node.leaf
    label = [f"{node.id} {node.name}", f"leaf{' ' + leaf.tensor.name if leaf.tensor.name else ''}",
             _shape_line(leaf.tensor)]
    if leaf.tensor.values is not None:
        label += [f"value {_shown_values(leaf.tensor)}", f"grad {_grad_text(leaf.grad)}"]
    if version is not None:
        label.append(version)
    elif leaf.version:
        label.append(f"version {leaf.version}")
    if leaf.hooks:
        label.append(f"{leaf.hooks} hook{'s' if leaf.hooks > 1 else ''}")
    return label


def _saved_label(saved: Saved) -> list[str]:
    if saved.tensor is None:
        return [f"saved {saved.slot}", saved.state]
    info = saved.tensor
    label = [f"saved {saved.slot}{' = ' + info.name if info.name else ''}", _shape_line(info),
             f"{info.nbytes} bytes"] + ([saved.state] if saved.state != HELD else [])
    return label + ([f"value {_shown_values(info)}"] if info.values is not None else [])


# ---------------------------------------------------------------------------- comparing


def _match(before: Graph, after: Graph) -> dict[str, str]:
    """Pairs (id before -> id after) found by walking both graphs from the output together."""
    pairs: dict[str, str] = {}
    if not before.nodes or not after.nodes:
        return pairs
    taken: set[str] = set()
    stack = [(before.nodes[0].id, after.nodes[0].id)]
    while stack:
        old_id, new_id = stack.pop()
        old, new = before.node(old_id), after.node(new_id)
        if old_id in pairs or new_id in taken:
            continue
        if old.name != new.name:  # one of them may have been inserted or cut out: step past it
            stack.extend(_step_past(old, new, before, after))
            continue
        pairs[old_id] = new_id
        taken.add(new_id)
        stack.extend((a, b) for a, b in reversed(list(zip(old.inputs, new.inputs)))
                     if a is not None and b is not None)
    # A named leaf reached by another path after the edit is still the same leaf.
    named_after = {n.leaf.tensor.name: n.id for n in after.nodes
                   if n.leaf and n.leaf.tensor.name and n.id not in taken}
    for node in before.nodes:
        if node.leaf and node.id not in pairs and node.leaf.tensor.name in named_after:
            pairs[node.id] = named_after.pop(node.leaf.tensor.name)
    return pairs


def _step_past(old: Node, new: Node, before: Graph, after: Graph) -> list[tuple[str, str]]:
    """Where to go on when two nodes at the same place differ: a node added after (CopySlices,
    in front of the old grad_fn) has the old node among its inputs; a node gone (a dropout in eval
    mode) had the new one among its inputs. Nothing when neither is so."""
    for target in new.inputs:
        if target is not None and after.node(target).name == old.name:
            return [(old.id, target)]
    for target in old.inputs:
        if target is not None and before.node(target).name == new.name:
            return [(target, new.id)]
    return []


def _carried(edge: Edge, pairs: dict[str, str]) -> tuple[str, int, str | None]:
    """An edge of the reading before, in the ids after; a target with no match stays unmatchable."""
    target = edge.target and pairs.get(edge.target, f"unmatched {edge.target}")
    return pairs[edge.source], edge.slot, target


def _resized(old: Node, new: Node) -> list[SavedResize]:
    """Saved slots of two matched nodes that are held in both with another shape or dtype, or
    that one of the two has not (a slot whose state changed is a SavedChange instead)."""
    before = {s.slot: s for s in old.saved}
    after = {s.slot: s for s in new.saved}
    found = []
    for slot in list(before) + [s for s in after if s not in before]:
        was, now = before.get(slot), after.get(slot)
        if was is not None and now is not None:
            if (was.state == now.state == HELD and
                    (was.tensor.shape, was.tensor.dtype) != (now.tensor.shape, now.tensor.dtype)):
                found.append(SavedResize(old.id, old.name, slot, was.tensor, now.tensor))
        elif (was or now).state == HELD and _state_of(new if now is None else old, slot) is None:
            found.append(SavedResize(old.id, old.name, slot, was and was.tensor,
                                     now and now.tensor))
    return found


def _state_of(node: Node, slot: str) -> str | None:
    """The state of a saved slot; a list slot (tensors[0]) no longer readable is one entry."""
    for saved in node.saved:
        if saved.slot in (slot, slot.split("[")[0]):
            return saved.state
    return None
