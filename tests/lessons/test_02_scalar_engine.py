"""02 scalar engine: every value the lesson's checks saw, and the torch tensors its observations
left, against oracles written here: the analytic derivatives (2x + 2, 2x, the diamond's
(1 − tanh²u + 2u)·eˣ, the neuron's (1 − y²)·xᵢ, (1 − y²)·wᵢ, 1 − y²), every reverse topological
order of the diamond enumerated by brute force, and counts of ops, edges and forward passes done
by hand. The engine itself (Value, topological_order, backward) is tested directly against
torch.autograd in float64: each op, random compositions with reused Values, and a second backward.
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import itertools
import math
import random

import pytest
import torch

from tests.support import Promise, load_lesson

lesson = load_lesson("02_autograd_from_scratch_scalar_engine.py")
Value = lesson.Value

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  x.grad = 6.0", "FAIL  x.grad = 3.0", "FAIL  u.grad = 0.1375",
                           "ok  b.grad = 0.971648")),
    Promise(exit=1, shows=("FAIL  [node.name for node in visited] = [x, exp, tanh, **2, +]",
                           "FAIL  b.grad = 0.0", "ok  x.grad = 6.0")),
    Promise(exit=1, shows=("FAIL  x.grad = 18.0",)),
]

MUTANTS = [
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (other.data, self.data))", "lambda: (self.data, other.data))"),
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (1 - t * t,))", "lambda: (1 - t,))"),
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (n * self.data ** (n - 1),))", "lambda: (n * self.data**n,))"),
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (e,))  # the derivative", "lambda: (self.data,))  # the derivative"),
    ("02_autograd_from_scratch_scalar_engine.py", "        if node.parents:  # an intermediate", "        if not node.parents:  # an intermediate"),
    ("02_autograd_from_scratch_scalar_engine.py", "        if node not in placed:  # a Value used twice", "        if True:  # a Value used twice"),
    ("02_autograd_from_scratch_scalar_engine.py", "    output.grad += 1.0\n", "    output.grad = 1.0\n"),
    ("02_autograd_from_scratch_scalar_engine.py", "    ops = sum(1 for node in visited if node.parents)", "    ops = sum(1 for node in visited)"),
    ("02_autograd_from_scratch_scalar_engine.py", "(whole_neuron(up) - whole_neuron(down)) / (2 * h)", "(whole_neuron(up) - whole_neuron(numbers)) / h"),
]

# Written by a tester who had not read these tests, from the lesson alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # * rule gives each parent its own value, not the other's: 2*x sends 3 not 2 ([1] x.grad 9); neuron w.grad = (1-y²)wᵢ, x.grad = (1-y²)xᵢ
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (other.data, self.data))", "lambda: (self.data, other.data))"),
    # power rule with n-1 as the factor: d(x**2)/dx = x, [1] x.grad 5, [3] u.grad and x.grad smaller
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (n * self.data ** (n - 1),))", "lambda: ((n - 1) * self.data ** (n - 1),))"),
    # tanh derivative 1 - t in place of 1 - t²: [3] u.grad/x.grad and every [4] gradient change
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (1 - t * t,))", "lambda: (1 - t,))"),
    # exp derivative taken as the input x, not exp(x): [3] x.grad = u.grad · 0.5 in place of u.grad · e^0.5
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (e,))  # the derivative of exp is exp itself", "lambda: (self.data,))  # the derivative of exp is exp itself"),
    # + rule as if it were -: second operand gets -1; [1] x.grad 4, [4]/[5] gradients of later terms flip sign
    ("02_autograd_from_scratch_scalar_engine.py", "lambda: (1.0, 1.0))", "lambda: (1.0, -1.0))"),
    # inputs start with grad 1.0 in place of 0.0: every input gradient is 1 too large ([1] 9, [2] 7 and 13, ...)
    ("02_autograd_from_scratch_scalar_engine.py", "        self.grad = 0.0  # d(output)/d(this Value), filled in by backward()", "        self.grad = 1.0  # d(output)/d(this Value), filled in by backward()"),
    # pre-order (node placed before its parents): visited order in [3] wrong and gradients through intermediates lost
    ("02_autograd_from_scratch_scalar_engine.py", "        if node not in placed:  # a Value used twice is placed once\n            placed.add(node)\n            for parent in node.parents:\n                place(parent)\n            order.append(node)  # after all of its parents",
        "        if node not in placed:  # a Value used twice is placed once\n            placed.add(node)\n            order.append(node)  # after all of its parents\n            for parent in node.parents:\n                place(parent)"),
    # no dedupe in the topological sort: u placed twice in [3], visited names gain duplicates and u passes on partial grads
    ("02_autograd_from_scratch_scalar_engine.py", "            placed.add(node)\n", ""),
    # every Value zeroed at backward(), inputs included: [2] second backward gives 6, not 12 (no accumulation)
    ("02_autograd_from_scratch_scalar_engine.py", "        if node.parents:  # an intermediate Value: its .grad belongs to this backward alone\n            node.grad = 0.0",
        "        node.grad = 0.0  # an intermediate Value: its .grad belongs to this backward alone"),
    # chain rule drops node.grad: parent gets only the local derivative; [3] and [4] gradients wrong
    ("02_autograd_from_scratch_scalar_engine.py", "            parent.grad += local * node.grad  # the chain rule; += adds the share of each use",
        "            parent.grad += local  # the chain rule; += adds the share of each use"),
    # [1] example changed consistently on engine and torch to y = x**2 + 3x: y.data 18, x.grad 9 (docs say 15 and 8)
    ("02_autograd_from_scratch_scalar_engine.py", "    y = x**2 + 2 * x\n    y.backward()\n    x_torch = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)\n    y_torch = x_torch**2 + 2 * x_torch",
        "    y = x**2 + 3 * x\n    y.backward()\n    x_torch = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)\n    y_torch = x_torch**2 + 3 * x_torch"),
    # [3] diamond evaluated at x = 0.25 on both sides (documented as 0.5): u.grad and x.grad change, still agreeing with torch
    ("02_autograd_from_scratch_scalar_engine.py", "    x = Value(0.5, \"x\")\n    u = x.exp()\n    a, b = u.tanh(), u**2\n    y = a + b\n    visited = y.backward()\n    x_torch = torch.tensor(0.5, dtype",
        "    x = Value(0.25, \"x\")\n    u = x.exp()\n    a, b = u.tanh(), u**2\n    y = a + b\n    visited = y.backward()\n    x_torch = torch.tensor(0.25, dtype"),
    # [4] sign of x2 dropped (0.9 not -0.9); torch copies it, so checks agree but y and all 7 gradients change
    ("02_autograd_from_scratch_scalar_engine.py", "Value(0.2, \"x1\"), Value(-0.9, \"x2\")]", "Value(0.2, \"x1\"), Value(0.9, \"x2\")]"),
    # neuron skips the first weight/input (off-by-one): [4] y and grads change (w0,x0 grads 0), [5] ops 5, edges 9
    ("02_autograd_from_scratch_scalar_engine.py", "    for w_i, x_i in zip(w, x):", "    for w_i, x_i in zip(w[1:], x[1:]):"),
    # [5] ops counts every visited Value, inputs too: 14 in place of 7, note says 196 ops
    ("02_autograd_from_scratch_scalar_engine.py", "    ops = sum(1 for node in visited if node.parents)", "    ops = len(visited)"),
    # [5] central difference divided by h, not 2h: every by_differences value doubled
    ("02_autograd_from_scratch_scalar_engine.py", "by_differences.append((whole_neuron(up) - whole_neuron(down)) / (2 * h))", "by_differences.append((whole_neuron(up) - whole_neuron(down)) / h)"),
    # [5] loop skips the last input (b): evaluations 12, by_differences has 6 values
    ("02_autograd_from_scratch_scalar_engine.py", "    for i in range(len(numbers)):", "    for i in range(len(numbers) - 1):"),
    # [5] wrong claim in a check: edge count expected 12 (forgetting the tanh's edge) in place of 13
    ("02_autograd_from_scratch_scalar_engine.py", "    lab.check(edges, 13, ", "    lab.check(edges, 12, "),
]

# The engine computes with Python's math, torch with its own kernels: tanh, exp and pow may differ by
# a few ulp (2.2e-16 relative each); + and × are correctly rounded in both. 1e-12 leaves a wide margin
# for the few ops of the lesson's graphs (the lesson's own comment argues the same bound).
RTOL = 1e-12


def on_the_lab_device(tensor: torch.Tensor, lab) -> None:
    """A torch leaf of the lesson's comparison: float64 and on the lab's device, as the lesson says."""
    assert tensor.dtype == torch.float64 and tensor.device.type == lab.device.type


# -- the observations ---------------------------------------------------------------------------------

def test_original_example_is_2x_plus_2_on_both_engines(lab):
    seen = lab.run(lesson.original_example)
    x = 3.0
    # Small integers: exact in float64 on every machine, so equality is the oracle.
    assert seen["y.data"] == x**2 + 2 * x == 15.0
    assert seen["x.grad"] == 2 * x + 2 == 8.0 and type(seen["x.grad"]) is float  # a Python float
    x_torch = seen.names["x_torch"]
    on_the_lab_device(x_torch, lab)
    assert x_torch.item() == x and x_torch.grad.item() == 8.0 and seen.names["y_torch"].item() == 15.0
    assert seen.names["x"].data == x and seen.names["y"].data == 15.0


# The engine's graph of y = x**2 + 2 * x after y.backward(), by hand: y is + of x**2 and 2 * x
# (__rmul__: x * 2, so x first, then the 2 wrapped as a Value); depth first from y, first parents
# first: n0 +, n1 **2, n2 x, n3 *, n4 the 2. Grads: 1 on each op (each is added once into y),
# dy/dx = 2x + 2 = 8, dy/d2 = x = 3. Values: 9, 6, 15. A Python float is 8 bytes of float64.
ENGINE_GRAPH = [
    "output (shape (), float64, 8 bytes, value 15.0)",
    "  n0 +  value 15.0, grad 1.0",
    "    n1 **2  value 9.0, grad 1.0",
    "      n2 input  leaf x (shape (), float64, 8 bytes, value 3.0), grad 8.0",
    "    n3 *  value 6.0, grad 1.0",
    "      n2 (above)",
    "      n4 input  leaf 2 (shape (), float64, 8 bytes, value 2.0), grad 3.0",
]


def test_original_example_draws_the_engines_own_values_as_torch_draws_its_graph(lab):
    seen = lab.run(lesson.original_example)
    assert seen["graph"].splitlines() == ENGINE_GRAPH
    y, x = seen.names["y"], seen.names["x"]
    graph = seen.names["graph"]
    # The same Values, found by the test's own walk: n2 is x, reached from both terms.
    square, product = y.parents
    assert square.parents == (x,) and product.parents[0] is x and product.parents[1].parents == ()
    x_leaf = graph.node("n2").leaf
    assert x_leaf.tensor.values == (x.data,) and x_leaf.grad.values == (8.0,)
    # torch's graph of y_torch, read from next_functions directly: Add(Pow(x), Mul(x, None)), x's
    # AccumulateGrad one object reached from both; in walk order the ops are n0, n1 and n3.
    add = seen.names["y_torch"].grad_fn
    (power, _), (mul, _) = add.next_functions
    (accumulate, _), = power.next_functions
    assert [f.name() for f in (add, power, mul)] == ["AddBackward0", "PowBackward0", "MulBackward0"]
    assert mul.next_functions[0][0] is accumulate and mul.next_functions[1][0] is None
    assert accumulate.variable is seen.names["x_torch"] and accumulate.variable.grad.item() == 8.0
    assert seen["[node.id for node in graph.nodes if node.leaf is None]"] == ["n0", "n1", "n3"]
    assert seen['[edge.source for edge in graph.edges() if edge.target == "n2"]'] == ["n1", "n3"]
    assert seen['graph.node("n2").leaf.grad.values'] == (8.0,)  # 2x + 2 at 3, on both leaves


def test_reused_value_collects_a_share_from_each_use_and_accumulates_across_calls(lab):
    seen = lab.run(lesson.reused_value)
    x = 3.0
    # d(x·x)/dx = 2x; a second backward() adds it again (leaves accumulate, as in torch).
    assert seen.every("x.grad") == [2 * x, 2 * (2 * x)] == [6.0, 12.0]
    x_torch = seen.names["x_torch"]
    on_the_lab_device(x_torch, lab)
    assert x_torch.item() == x and x_torch.grad.item() == 12.0
    assert seen.names["y"].parents == (seen.names["x"], seen.names["x"])  # the same Value, twice


def reverse_topological_orders(output) -> list[list]:
    """Every order of the Values output was made from in which each Value comes before all of its
    parents (brute force over permutations: the graphs here have a handful of Values)."""
    nodes, stack = [], [output]
    while stack:
        node = stack.pop()
        if all(node is not seen for seen in nodes):
            nodes.append(node)
            stack.extend(node.parents)
    return [list(order) for order in itertools.permutations(nodes)
            if all(order.index(node) < order.index(parent) for node in order for parent in node.parents)]


def test_diamond_is_visited_in_a_reverse_topological_order(lab):
    seen = lab.run(lesson.diamond)
    names = seen.names
    x, u, a, b, y = (names[k] for k in ("x", "u", "a", "b", "y"))
    visited = names["visited"]
    orders = reverse_topological_orders(y)
    # y first, u after both a and b, x last: two orders, a and b either way round.
    assert [[node.name for node in order] for order in orders] in (
        [["+", "tanh", "**2", "exp", "x"], ["+", "**2", "tanh", "exp", "x"]],
        [["+", "**2", "tanh", "exp", "x"], ["+", "tanh", "**2", "exp", "x"]])
    assert any(len(visited) == len(order) and all(v is o for v, o in zip(visited, order)) for order in orders)
    # The depth-first order of the engine, by hand: place(y) places x, u, a, then b, then y; reversed.
    assert [id(node) for node in visited] == [id(y), id(b), id(a), id(u), id(x)]
    assert seen["[node.name for node in visited]"] == ["+", "**2", "tanh", "exp", "x"]


def test_diamond_gradients_are_the_chain_rule_summed_over_both_paths(lab):
    seen = lab.run(lesson.diamond)
    x = 0.5
    u = math.exp(x)
    du = (1 - math.tanh(u) ** 2) + 2 * u  # d tanh(u)/du + d u²/du
    assert seen["u.grad"] == pytest.approx(du, rel=RTOL, abs=0)
    assert seen["x.grad"] == pytest.approx(du * math.exp(x), rel=RTOL, abs=0)  # du/dx = eˣ
    x_torch = seen.names["x_torch"]
    on_the_lab_device(x_torch, lab)
    assert x_torch.item() == x
    assert x_torch.grad.item() == pytest.approx(du * math.exp(x), rel=RTOL, abs=0)
    assert seen.names["u_torch"].grad.item() == pytest.approx(du, rel=RTOL, abs=0)
    assert seen.names["y"].data == pytest.approx(math.tanh(u) + u**2, rel=RTOL, abs=0)


W, X, B = [0.7, -1.3, 0.4], [0.5, 0.2, -0.9], 0.1


def neuron_oracle(w: list[float], x: list[float], b: float) -> tuple[float, list[float], list[float], float]:
    """y = tanh(s), s = b + Σ wᵢxᵢ: ∂y/∂wᵢ = (1 − y²)xᵢ, ∂y/∂xᵢ = (1 − y²)wᵢ, ∂y/∂b = 1 − y²."""
    y = math.tanh(b + sum(wi * xi for wi, xi in zip(w, x)))
    slope = 1 - y * y
    return y, [slope * xi for xi in x], [slope * wi for wi in w], slope


def test_neuron_gradients_are_one_minus_y_squared_times_the_other_factor(lab):
    seen = lab.run(lesson.one_neuron)
    y, dw, dx, db = neuron_oracle(W, X, B)
    assert [v.data for v in seen.names["w"]] == W and [v.data for v in seen.names["x"]] == X
    assert seen.names["b"].data == B
    assert seen["y.data"] == pytest.approx(y, rel=RTOL, abs=0)
    assert seen["[v.grad for v in w]"] == pytest.approx(dw, rel=RTOL, abs=0)
    assert seen["[v.grad for v in x]"] == pytest.approx(dx, rel=RTOL, abs=0)
    assert seen["b.grad"] == pytest.approx(db, rel=RTOL, abs=0)
    # The torch side: float64 leaves holding the same numbers, with the same gradients.
    for name, values, grads in (("w_torch", W, dw), ("x_torch", X, dx)):
        tensors = seen.names[name]
        for tensor in tensors:
            on_the_lab_device(tensor, lab)
        assert [t.item() for t in tensors] == values
        assert [t.grad.item() for t in tensors] == pytest.approx(grads, rel=RTOL, abs=0)
    assert seen.names["b_torch"].item() == B
    assert seen.names["b_torch"].grad.item() == pytest.approx(db, rel=RTOL, abs=0)
    assert seen.names["y_torch"].item() == pytest.approx(y, rel=RTOL, abs=0)


def test_cost_counted_by_hand(lab):
    seen = lab.run(lesson.cost_counted)
    n = 3  # inputs of the neuron; it depends on 2n + 1 numbers (w, x, b)
    # Forward: n products, n sums (b + w₀x₀ + …), one tanh. Edges: 2 per product and per sum, 1 for tanh.
    assert seen["ops"] == n + n + 1 == 7
    assert seen["edges"] == 2 * n + 2 * n + 1 == 13
    assert seen["evaluations"] == 2 * (2 * n + 1) == 14  # central differences: two per number
    assert seen.names["numbers"] == W + X + [B]
    y, dw, dx, db = neuron_oracle(W, X, B)
    # Central differences with h = 1e-6: truncation h²|f‴|/6 < 1e-11, rounding ~ eps/h < 1e-9.
    assert seen["by_differences"] == pytest.approx(dw + dx + [db], rel=0, abs=1e-8)
    assert [v.grad for v in seen.names["inputs"]] == pytest.approx(dw + dx + [db], rel=RTOL, abs=0)
    assert ("backward: 13 local derivatives after 1 forward pass of 7 ops; central differences: 14 forward "
            "passes of 7 ops, 98 ops") in lab.stream.getvalue()


def test_the_engine_computes_with_python_floats_whatever_the_device(lab):
    seen = lab.run(lesson.one_neuron)
    assert all(type(v.data) is float and type(v.grad) is float for v in seen.names["w"] + seen.names["x"])


def test_the_printed_code_is_the_lesson_source(lab):
    lab.run(lesson.diamond)
    printed = lab.stream.getvalue()
    for line in ("u = x.exp()", "a, b = u.tanh(), u**2", "visited = y.backward()", "u_torch.retain_grad()"):
        assert f"\n    {line}" in printed, line
    assert "lab.check" not in printed


# -- the engine, directly against torch.autograd ------------------------------------------------------

def leaf(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


UNARY = {
    "tanh": (lambda v: v.tanh(), lambda t: t.tanh()),
    "exp": (lambda v: v.exp(), lambda t: t.exp()),
    "**2": (lambda v: v**2, lambda t: t**2),
    "**3": (lambda v: v**3, lambda t: t**3),
    "**0.5": (lambda v: v**0.5, lambda t: t**0.5),
    "**-1": (lambda v: v**-1, lambda t: t**-1),
    "**1.5": (lambda v: v**1.5, lambda t: t**1.5),
    "2.5 + v": (lambda v: 2.5 + v, lambda t: 2.5 + t),
    "v + 2.5": (lambda v: v + 2.5, lambda t: t + 2.5),
    "-1.5 * v": (lambda v: -1.5 * v, lambda t: -1.5 * t),
    "v * -1.5": (lambda v: v * -1.5, lambda t: t * -1.5),
}


@pytest.mark.parametrize("op", UNARY)
def test_each_unary_op_matches_torch_autograd_in_float64(op):
    on_value, on_tensor = UNARY[op]
    rng = random.Random(op)
    for _ in range(20):
        a = rng.uniform(0.1, 2.0)  # positive: every power is defined
        x, x_torch = Value(a), leaf(a)
        y, y_torch = on_value(x), on_tensor(x_torch)
        y.backward()
        y_torch.backward()
        assert y.data == pytest.approx(y_torch.item(), rel=RTOL, abs=0), op
        assert x.grad == pytest.approx(x_torch.grad.item(), rel=RTOL, abs=0), op


@pytest.mark.parametrize("op", ["+", "*"])
def test_each_binary_op_matches_torch_autograd_in_float64(op):
    rng = random.Random(op)
    for _ in range(20):
        a, b = rng.uniform(-2, 2), rng.uniform(-2, 2)
        x, z, x_torch, z_torch = Value(a), Value(b), leaf(a), leaf(b)
        y, y_torch = (x + z, x_torch + z_torch) if op == "+" else (x * z, x_torch * z_torch)
        y.backward()
        y_torch.backward()
        assert y.data == y_torch.item()  # one correctly rounded op in both: equal
        assert (x.grad, z.grad) == (x_torch.grad.item(), z_torch.grad.item())  # 1, or the other factor


def random_program(rng: random.Random, n_inputs: int, n_ops: int):
    """A random straight-line program over n_inputs numbers, each step using earlier results (so Values
    are reused), as a list of (op, operand indices); values stay within a few units."""
    program = []
    for step in range(n_ops):
        available = n_inputs + step
        op = rng.choice(["+", "*", "tanh", "exp∘tanh", "sq", "sqrt(1+sq)", "const"])
        program.append((op, rng.randrange(available), rng.randrange(available)))
    return program


def run_program(program, inputs):
    """The program on Values or on torch tensors: the same operations in the same order."""
    values = list(inputs)
    for op, i, j in program:
        a, b = values[i], values[j]
        values.append({"+": lambda: a + b, "*": lambda: a.tanh() * b.tanh(), "tanh": lambda: a.tanh(),
                       "exp∘tanh": lambda: a.tanh().exp(), "sq": lambda: a.tanh() ** 2,
                       "sqrt(1+sq)": lambda: (1 + a * a) ** 0.5, "const": lambda: 0.5 * a + 0.25}[op]())
    return values[-1] + values[-2]  # the last two results, so that more than one path reaches the end


@pytest.mark.parametrize("seed", range(12))
def test_random_compositions_with_reused_values_match_torch_autograd(seed):
    rng = random.Random(seed)
    numbers = [rng.uniform(-1.5, 1.5) for _ in range(4)]
    program = random_program(rng, len(numbers), 10)
    inputs, tensors = [Value(a) for a in numbers], [leaf(a) for a in numbers]
    y, y_torch = run_program(program, inputs), run_program(program, tensors)
    y.backward()
    y_torch.backward()
    expected = [t.grad.item() if t.grad is not None else 0.0 for t in tensors]  # None: not reached
    # A few ulp from each tanh, exp and pow, carried through ten steps: 1e-9 of the gradients' scale.
    scale = max(1.0, *(abs(g) for g in expected))
    assert y.data == pytest.approx(y_torch.item(), rel=1e-9, abs=1e-9 * abs(y.data))
    assert [v.grad for v in inputs] == pytest.approx(expected, rel=1e-9, abs=1e-9 * scale), program


@pytest.mark.parametrize("seed", range(4))
def test_a_second_backward_adds_into_the_inputs_as_torch_does(seed):
    rng = random.Random(100 + seed)
    numbers = [rng.uniform(-1.5, 1.5) for _ in range(3)]
    program = random_program(rng, len(numbers), 8)
    inputs, tensors = [Value(a) for a in numbers], [leaf(a) for a in numbers]
    y, y_torch = run_program(program, inputs), run_program(program, tensors)
    y.backward()
    first = [v.grad for v in inputs]
    y.backward()  # no zeroing: inputs accumulate, intermediates start again from 0
    y_torch.backward(retain_graph=True)
    y_torch.backward()
    expected = [t.grad.item() if t.grad is not None else 0.0 for t in tensors]
    scale = max(1.0, *(abs(g) for g in expected))
    assert [v.grad for v in inputs] == pytest.approx(expected, rel=1e-9, abs=1e-9 * scale)
    # The same shares added again onto the first sum: twice the first, up to the rounding of the sums.
    assert [v.grad for v in inputs] == pytest.approx([2 * g for g in first], rel=RTOL, abs=RTOL * scale)
    for v in inputs:  # zeroed by hand, as x.grad.zero_() in torch: the next backward starts afresh
        v.grad = 0.0
    y.backward()
    assert [v.grad for v in inputs] == first  # the same shares, added in the same order from 0: equal


def test_backward_from_an_input_itself_adds_one_each_time_as_torch_does():
    x, x_torch = Value(2.0), leaf(2.0)
    for _ in range(2):
        x.backward()
        x_torch.backward()
    assert x.grad == x_torch.grad.item() == 2.0  # dx/dx = 1, twice


def test_topological_order_places_each_value_once_after_its_parents():
    for seed in range(20):
        rng = random.Random(seed)
        inputs = [Value(rng.uniform(-1, 1)) for _ in range(3)]
        y = run_program(random_program(rng, 3, 12), inputs)
        order = lesson.topological_order(y)
        assert len({id(node) for node in order}) == len(order) and order[-1] is y
        position = {id(node): i for i, node in enumerate(order)}
        reachable, stack = set(), [y]
        while stack:  # every Value reachable from y, by the test's own walk
            node = stack.pop()
            if id(node) not in reachable:
                reachable.add(id(node))
                stack.extend(node.parents)
        assert set(position) == reachable
        assert all(position[id(parent)] < position[id(node)] for node in order for parent in node.parents)
        assert [id(node) for node in y.backward()] == [id(node) for node in reversed(order)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_backward_evaluates_one_local_derivative_per_edge(n):
    rng = random.Random(n)
    w = [Value(rng.uniform(-1, 1)) for _ in range(n)]
    x = [Value(rng.uniform(-1, 1)) for _ in range(n)]
    y = lesson.neuron(w, x, Value(0.1))
    calls, evaluated = [0], [0]
    for node in lesson.topological_order(y):
        def counting(original=node.local_derivatives):
            calls[0] += 1
            derivatives = original()
            evaluated[0] += len(derivatives)
            return derivatives
        node.local_derivatives = counting
    y.backward()
    assert calls[0] == (2 * n + 1) + (n + n + 1)  # each Value once: 2n + 1 inputs; n *, n +, 1 tanh
    assert evaluated[0] == 2 * n + 2 * n + 1  # one per edge: 2 per product and sum, 1 for the tanh
    _, dw, dx, _ = neuron_oracle([v.data for v in w], [v.data for v in x], 0.1)
    assert [v.grad for v in w] == pytest.approx(dw, rel=RTOL) and [v.grad for v in x] == pytest.approx(dx, rel=RTOL)


def test_a_power_is_one_edge_and_a_number_becomes_a_leaf():
    x = Value(1.5)
    assert len((x**3).parents) == 1  # the exponent is kept in the closure, not a Value
    doubled = 2 * x
    constant = doubled.parents[1]
    assert doubled.parents[0] is x and (constant.data, constant.name, constant.parents) == (2.0, "2", ())


# -- what each check expected -------------------------------------------------------------------------

def expects(seen, label: str) -> tuple[list[float], float, float]:
    """The expected value of the check under label, as floats, with its rtol and atol."""
    expectation = seen.expected[label]
    value = expectation.value
    values = value if isinstance(value, list) else [value]
    return [float(v) for v in values], expectation.rtol, expectation.atol


def test_every_check_expects_what_the_oracles_say(lab):
    """An expected value is a claim like any other: under make mutate every check agrees, so a wrong
    expectation (and a tolerance too loose to tell) is caught here, against the oracles above."""
    seen = lab.run(lesson.original_example)
    assert expects(seen, "y.data") == ([15.0], 0, 0) and expects(seen, "x.grad") == ([8.0], 0, 0)
    ops, into_x = ("[node.id for node in graph.nodes if node.leaf is None]",
                   '[edge.source for edge in graph.edges() if edge.target == "n2"]')
    assert seen.expected[ops].value == ["n0", "n1", "n3"]
    assert seen.expected[into_x].value == ["n1", "n3"]
    leaf_grad = seen.expected['graph.node("n2").leaf.grad.values']
    assert (leaf_grad.value, leaf_grad.rtol, leaf_grad.atol) == ((8.0,), 0, 0)
    seen = lab.run(lesson.reused_value)
    assert [float(e) for e in [seen.expected["x.grad"].value]] == [12.0]  # the last of the two
    x, u = 0.5, math.exp(0.5)
    du = (1 - math.tanh(u) ** 2) + 2 * u
    seen = lab.run(lesson.diamond)
    assert seen.expected["[node.name for node in visited]"].value == ["+", "**2", "tanh", "exp", "x"]
    for label, oracle in (("u.grad", du), ("x.grad", du * math.exp(x))):
        values, rtol, atol = expects(seen, label)
        assert values == pytest.approx([oracle], rel=RTOL, abs=0) and rtol <= 1e-12 and atol == 0
    y, dw, dx, db = neuron_oracle(W, X, B)
    seen = lab.run(lesson.one_neuron)
    for label, oracle in (("y.data", [y]), ("[v.grad for v in w]", dw), ("[v.grad for v in x]", dx),
                          ("b.grad", [db])):
        values, rtol, atol = expects(seen, label)
        assert values == pytest.approx(oracle, rel=RTOL, abs=0) and rtol <= 1e-12 and atol == 0
    seen = lab.run(lesson.cost_counted)
    assert expects(seen, "ops")[0] == [7.0] and expects(seen, "edges")[0] == [13.0]
    assert expects(seen, "evaluations")[0] == [14.0]
    values, rtol, atol = expects(seen, "by_differences")
    assert values == pytest.approx(dw + dx + [db], rel=RTOL, abs=0) and atol <= 1e-8
