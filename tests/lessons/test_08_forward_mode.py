"""08 forward mode: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: the derivative 2x, the Jacobian of (x0·x1, sin x0, x1²) by hand
and by float64 central differences, and diag(1 − tanh²(W x + b)) W in float64 for the timed
layers; and bench row 8 at tiny sizes. TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py).

This file asserts no timing: the cost rule is run with a lab of the test's own, and only its
agreement checks must hold. (The lesson prints its timings as notes;
none is a check, so no timing can fail its terminal run either.)
"""

import inspect
import math

import pytest
import torch

from bench.rows.forward_reverse import BIG, SMALL, forward_reverse
from tests.support import DEVICES, Promise, assert_caught, load_lesson, quiet_lab

lesson = load_lesson("08_higher_order_forward_mode.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  tangent = 12.0",)),
    Promise(shows=("jv = [1.0, 0.0, 4.0]",)),
]
# pytest resets warning filters per test; the lesson's filter for torch's own jit.script deprecation goes with it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

MUTANTS = [
    ("08_higher_order_forward_mode.py", "dual_x = fwAD.make_dual(x, torch.tensor(1.0))\n",
     "dual_x = fwAD.make_dual(x, torch.tensor(2.0))\n"),
    ("08_higher_order_forward_mode.py", "        y = dual_x**2\n", "        y = dual_x**3\n"),
    ("08_higher_order_forward_mode.py",
     "        inside = fwAD.unpack_dual(y).tangent\n    after = fwAD.unpack_dual(y)\n",
     "        inside = fwAD.unpack_dual(y).tangent\n        after = fwAD.unpack_dual(y)\n"),
    ("08_higher_order_forward_mode.py",
     "        fwAD.make_dual(x, torch.tensor(1.0))\n\n\nlab.run(make_dual_outside_a_level)",
     "        fwAD.unpack_dual(x)\n\n\nlab.run(make_dual_outside_a_level)"),
    ("08_higher_order_forward_mode.py", "torch.stack([x[0] * x[1], torch.sin(x[0]), x[1] ** 2])",
     "torch.stack([x[0] * x[1], torch.cos(x[0]), x[1] ** 2])"),
    ("08_higher_order_forward_mode.py", "[math.cos(x0), 0.0]", "[math.sin(x0), 0.0]"),
    ("08_higher_order_forward_mode.py", "(uj,) = vjp_fn(u)",
     "(uj,) = vjp_fn(torch.tensor([1.0, 0.0, 0.0]))"),
    ("08_higher_order_forward_mode.py", "torch.stack(columns, dim=1)", "torch.stack(columns)"),
    ("08_higher_order_forward_mode.py", '{"tall": (small, big), "wide": (big, small)}',
     '{"tall": (big, small), "wide": (small, big)}'),
    ("08_higher_order_forward_mode.py", "torch.tanh(weight @ inputs + bias)", "torch.tanh(weight @ inputs)"),
    ("bench/rows/forward_reverse.py", "Figure(ms[name], ms[other]", "Figure(ms[name], ms[name]"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 08 forward mode
    # columns_and_rows(): JVP columns stacked as rows: from_columns is Jᵀ (2×3)
    ('08_higher_order_forward_mode.py', 'from_columns, from_rows = torch.stack(columns, dim=1), torch.stack(rows)', 'from_columns, from_rows = torch.stack(columns), torch.stack(rows)'),
    # jvp_beside_vjp(): the tangent is x instead of v: jv = J x
    ('08_higher_order_forward_mode.py', '_, jv = jvp(small_map, (x,), (v,))', '_, jv = jvp(small_map, (x,), (x,))'),
    # tangent_after_the_level(): unpack_dual read inside the level: after.tangent = 6 instead of None
    ('08_higher_order_forward_mode.py', '        inside = fwAD.unpack_dual(y).tangent\n    after = fwAD.unpack_dual(y)\n', '        inside = fwAD.unpack_dual(y).tangent\n        after = fwAD.unpack_dual(y)\n'),
    # cost_rule(): tall and wide swapped: results['tall'] is ℝ²⁰⁴⁸ → ℝ⁴
    ('08_higher_order_forward_mode.py', '{"tall": (small, big), "wide": (big, small)}', '{"tall": (big, small), "wide": (small, big)}'),
    # dual_numbers(): the tangent direction is 2 instead of 1: tangent 12 instead of 6
    ('08_higher_order_forward_mode.py', '        dual_x = fwAD.make_dual(x, torch.tensor(1.0))', '        dual_x = fwAD.make_dual(x, torch.tensor(2.0))'),
]


def jacobian_of_small_map(x0: float, x1: float) -> torch.Tensor:
    """d(x0·x1, sin x0, x1²)/d(x0, x1), derived by hand here."""
    return torch.tensor([[x1, x0], [math.cos(x0), 0.0], [0.0, 2 * x1]], dtype=torch.float64)


def test_dual_numbers_carry_the_derivative(lab):
    seen = lab.run(lesson.dual_numbers)
    x, v = 3.0, 1.0
    assert seen["value"].item() == x**2
    assert seen["tangent"].item() == pytest.approx(2 * x * v)  # f′(x)·v
    requires_grad, grad_fn = seen["(y.requires_grad, y.grad_fn)"]
    assert requires_grad is False and grad_fn is None


def test_the_tangent_is_gone_after_the_level(lab):
    seen = lab.run(lesson.tangent_after_the_level)
    assert seen["inside"].item() == pytest.approx(2 * 3.0)
    assert seen["after.tangent"] is None
    assert seen["after.primal"].item() == 9.0


def test_make_dual_outside_a_level_raises(lab):
    seen = lab.run(lesson.make_dual_outside_a_level)
    assert_caught(seen["error"], RuntimeError, "no level exists")


def test_small_map_and_its_hand_jacobian_match_central_differences():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(lesson.small_map(x), torch.tensor([2.0, math.sin(1.0), 4.0], dtype=torch.float64))
    h = 1e-6
    columns = [(lesson.small_map(x + h * e) - lesson.small_map(x - h * e)) / (2 * h) for e in torch.eye(2).double()]
    numeric = torch.stack(columns, dim=1)
    assert torch.allclose(numeric, jacobian_of_small_map(1.0, 2.0), atol=1e-8)
    assert torch.allclose(lesson.jacobian_by_hand(x).double(), jacobian_of_small_map(1.0, 2.0), atol=1e-7)


def test_jvp_is_j_times_v_and_vjp_is_u_times_j(lab):
    seen = lab.run(lesson.jvp_beside_vjp)
    jacobian = jacobian_of_small_map(1.0, 2.0)
    v, u = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    names = seen.names
    assert torch.equal(names["v"].cpu().double(), v) and torch.equal(names["u"].cpu().double(), u)
    assert seen["jv"].shape == (3,) and seen["uj"].shape == (2,)  # one per output, one per input
    assert torch.allclose(seen["jv"].cpu().double(), jacobian @ v, atol=1e-6)  # (1, cos 1, −4)
    assert torch.allclose(seen["uj"].cpu().double(), u @ jacobian, atol=1e-6)  # (2 + cos 1, 5)


def test_columns_and_rows_rebuild_the_jacobian(lab):
    seen = lab.run(lesson.columns_and_rows)
    jacobian = jacobian_of_small_map(1.0, 2.0)
    for name in ("from_columns", "from_rows", "jacfwd(small_map)(x)", "jacrev(small_map)(x)"):
        assert seen[name].shape == (3, 2), name
        assert torch.allclose(seen[name].cpu().double(), jacobian, atol=1e-6), name


@pytest.mark.parametrize("device", DEVICES)
def test_cost_rule_jacobians_are_diag_one_minus_tanh_squared_times_w(device):
    lab = quiet_lab(device)
    threads = torch.get_num_threads()
    results = lab.run(lesson.cost_rule).names["results"]
    assert torch.get_num_threads() == threads  # fastest_seconds times on one thread, then restores the setting
    agreement = [line for line in lab.failed if "max |" in line]
    assert agreement == [], lab.stream.getvalue()
    assert (results["tall"]["n"], results["tall"]["m"]) == (4, 2048)  # n ≪ m
    assert (results["wide"]["n"], results["wide"]["m"]) == (2048, 4)  # n ≫ m
    for shape, out in results.items():
        n, m = out["n"], out["m"]
        _, x, weight, bias = lesson.tanh_layer(n, m, "cpu")
        x, weight, bias = x.double(), weight.double(), bias.double()
        oracle = (1 - torch.tanh(weight @ x + bias) ** 2)[:, None] * weight  # d tanh(u)/du = 1 − tanh²
        for mode in ("jacfwd", "jacrev"):
            assert out[mode].shape == (m, n), (shape, mode)
            assert torch.allclose(out[mode].cpu().double(), oracle, atol=1e-5), (shape, mode)
        assert out["jacfwd_s"] > 0 and out["jacrev_s"] > 0


def test_tanh_layer_is_tanh_of_w_x_plus_b():
    layer, x, weight, bias = lesson.tanh_layer(3, 5, "cpu")
    assert weight.shape == (5, 3) and bias.shape == (5,) and x.shape == (3,)
    manual = [math.tanh(sum(weight[i, j].item() * x[j].item() for j in range(3)) + bias[i].item()) for i in range(5)]
    assert torch.allclose(layer(x), torch.tensor(manual), atol=1e-6)


def test_bench_row_8_small():
    threads = torch.get_num_threads()
    rows = forward_reverse(torch.device("cpu"), small=2, big=16, repeats=1)
    assert torch.get_num_threads() == threads  # the row times on one thread, then restores the setting
    defaults = inspect.signature(lesson.cost_rule).parameters
    assert (SMALL, BIG) == (defaults["small"].default, defaults["big"].default)  # the lesson's sizes
    assert [row.key for row in rows] == ["8a", "8b", "8c", "8d"]
    assert [row.what.split(":")[0] for row in rows] == ["tall ℝ^2 → ℝ^16"] * 2 + ["wide ℝ^16 → ℝ^2"] * 2
    assert "jacfwd (2 JVPs) vs jacrev (16 VJPs)" in rows[0].what
    assert "jacrev (16 VJPs) vs jacfwd (2 JVPs)" in rows[1].what
    assert all(row.cpu.met is True and row.goal.startswith("agree") for row in rows)  # the Jacobians agree
    for first, second in ((rows[0], rows[1]), (rows[2], rows[3])):  # each mode is the other's reference
        assert first.cpu.reference == second.cpu.value and second.cpu.reference == first.cpu.value
        assert first.cpu.ratio == pytest.approx(1 / second.cpu.ratio)
