"""06 custom Function: every value the lesson's checks saw (and the locals its observations left),
against oracles written here: analytic derivatives, gradcheck/gradgradcheck in float64 on the
lesson's own Function classes, and the float32 rounding of x ± eps worked out with struct (IEEE
single precision, not torch). TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py)."""

import math
import struct

import pytest
import torch
from torch.autograd import Function, gradcheck, gradgradcheck

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("06_extending_autograd_custom_function.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  passed = False",)),
    Promise(exit=1, shows=("FAIL  loose = False",)),
    Promise(exit=1, shows=("FAIL  grad_x = [1.0, -2.0, 4.0]", "FAIL  RuntimeError: element 0 of tensors does not require grad")),
]

MUTANTS = [
    ("06_extending_autograd_custom_function.py", "grad_x = grad_y * 2 * x  # chain rule: dL", "grad_x = 2 * x  # chain rule: dL"),
    ("06_extending_autograd_custom_function.py", "grad_x = grad_y * 3 * x  # wrong on purpose", "grad_x = grad_y * 2 * x  # wrong on purpose"),
    ("06_extending_autograd_custom_function.py", "x32 = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float32,",
     "x32 = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64,"),
    ("06_extending_autograd_custom_function.py", "loose = gradcheck(torch.square, (x32,), eps=1e-3,", "loose = gradcheck(torch.square, (x32,), eps=1e-6,"),
    ("06_extending_autograd_custom_function.py", "grad_x = grad_y * torch.cosh(x)  # with create_graph", "grad_x = grad_y * torch.cosh(x.detach())  # with create_graph"),
    ("06_extending_autograd_custom_function.py", "grad_x = grad_y * (ctx.expx + ctx.expnegx) / 2", "grad_x = grad_y * (ctx.expx - ctx.expnegx) / 2"),
    ("06_extending_autograd_custom_function.py", "        @once_differentiable  # runs", "        # runs"),
    ("06_extending_autograd_custom_function.py", "two = torch.tensor(2.0, dtype=torch.float32)", "two = torch.tensor(2.0, dtype=torch.float64)"),
    ("06_extending_autograd_custom_function.py", "step_down = two - (two - 1e-6)", "step_down = two - (two - 1e-6 / 2)"),
    ("06_extending_autograd_custom_function.py", "z = (y**2).sum()  # so", "z = y.sum()  # so"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 06 custom Function
    # square_function(): saves y instead of x: backward computes 2y = 2x², x.grad = [0.5, 4.5, 8]
    ('06_extending_autograd_custom_function.py', '            ctx.save_for_backward(x)  # backward needs x: d(x²)/dx = 2x\n            y = x * x\n', '            y = x * x\n            ctx.save_for_backward(y)  # backward needs x: d(x²)/dx = 2x\n'),
    # intermediates_on_ctx(): sign slip, exp(x) twice: the first derivative is exp(x), not cosh(x)
    ('06_extending_autograd_custom_function.py', 'expx, expnegx = torch.exp(x), torch.exp(-x)', 'expx, expnegx = torch.exp(x), torch.exp(x)'),
    # once_differentiable_backward(): backward forgets the factor 2: grad_x = 2x³ instead of 4x³
    ('06_extending_autograd_custom_function.py', '        @once_differentiable  # runs backward under no_grad (torch/autograd/function.py)\n        def backward(ctx, grad_y):\n            (x,) = ctx.saved_tensors\n            grad_x = grad_y * 2 * x\n', '        @once_differentiable  # runs backward under no_grad (torch/autograd/function.py)\n        def backward(ctx, grad_y):\n            (x,) = ctx.saved_tensors\n            grad_x = grad_y * x\n'),
    # float32_gradcheck(): the "float32" input is float64: no error, steps are float64's
    ('06_extending_autograd_custom_function.py', 'x32 = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float32', 'x32 = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64'),
]

X = [0.5, -1.5, 2.0]


def float32(value: float) -> float:
    """value rounded to IEEE single precision (round to nearest even), by struct, not torch."""
    return struct.unpack("f", struct.pack("f", value))[0]


def test_square_function_matches_2x_and_gradcheck(lab):
    seen = lab.run(lesson.square_function)
    assert seen["x.grad"].cpu().tolist() == [2 * v for v in X]
    assert seen["type(y.grad_fn).__name__"] == "SquareBackward"
    assert seen["passed"] is True
    square = seen.names["Square"]
    x = torch.tensor([0.3, -2.0, 1.7, 0.0], dtype=torch.float64, requires_grad=True)
    assert gradcheck(square.apply, (x,))
    # save_for_backward of an input keeps the backward differentiable (the tutorial's first case).
    assert gradgradcheck(square.apply, (x,))


def test_wrong_backward_gives_3x_and_fails_gradcheck(lab):
    seen = lab.run(lesson.wrong_backward)
    assert seen["x.grad"].cpu().tolist() == [3 * v for v in X]
    assert_caught(seen["error"], RuntimeError, "Jacobian mismatch for output 0 with respect to input 0")
    x = torch.tensor([0.7, -0.2], dtype=torch.float64, requires_grad=True)
    assert not gradcheck(seen.names["WrongSquare"].apply, (x,), raise_exception=False)


def test_float32_rounding_of_the_step(lab):
    made = lab.run(lesson.float32_gradcheck)
    assert_caught(made["error"], RuntimeError, "Jacobian mismatch")
    # Both blocks warned that the input is not float64.
    assert [any("not a double precision floating point" in w for w in caught)
            for caught in made.every("warnings")] == [True, True]
    # The steps gradcheck's x ± 1e-6 really take at 2 in float32, from IEEE rounding:
    step_up = float32(2.0 + float32(1e-6)) - 2.0
    step_down = 2.0 - float32(2.0 - float32(1e-6))
    assert step_up == 4 * 2.0**-22 and step_down == 8 * 2.0**-23  # the spacing is 2**-22 above 2, 2**-23 below
    # Exact on every machine: each step is one float32 add (IEEE 754 rounds it correctly, to nearest
    # even, on every CPU and in every SIMD width) and one subtraction of numbers within a factor of 2
    # of each other, which is exact (Sterbenz): the same two roundings that struct does above.
    assert made["step_up"].item() == step_up
    assert made["step_down"].item() == step_down
    up, down = float32(float32(2.0 + 1e-6) ** 2), float32(float32(2.0 - 1e-6) ** 2)
    assert made["central_difference"].item() == pytest.approx((up - down) / 2e-6, rel=1e-6)
    assert abs(made["central_difference"].item() - 4.0) > 0.1  # off by more than any default tolerance
    assert made["default_eps_loose_atol"] is False and made["loose"] is True


def test_float32_gradcheck_tolerances_directly():
    x32 = torch.tensor(X, requires_grad=True)
    with pytest.warns(UserWarning, match="not a double precision floating point"):
        assert not gradcheck(torch.square, (x32,), raise_exception=False)
    with pytest.warns(UserWarning, match="not a double precision floating point"):
        assert gradcheck(torch.square, (x32,), eps=1e-3, atol=1e-3, raise_exception=False)


def test_intermediates_on_ctx_give_a_gradient_without_a_graph(lab):
    made = lab.run(lesson.intermediates_on_ctx)
    assert made["grad_x"].cpu().tolist() == pytest.approx([math.cosh(v) for v in (0.5, -1.0, 2.0)])
    assert made.names["grad_x"].requires_grad is False
    assert made["grad_x.requires_grad"] is False
    second, mismatch = made.every("error")
    assert_caught(second, RuntimeError, "element 0 of tensors does not require grad")
    assert_caught(mismatch, RuntimeError, "Jacobian mismatch for output 0 with respect to input 0")
    x = torch.tensor([0.1, 1.3], dtype=torch.float64, requires_grad=True)
    assert gradcheck(made.names["SinhOnCtx"].apply, (x,))  # first order is right
    assert not gradgradcheck(made.names["SinhOnCtx"].apply, (x,), raise_exception=False)


def test_intermediates_saved_with_save_for_backward_fail_the_same_way():
    """Backs [4]'s comment: it is where backward's tensors come from, not how they are kept."""
    class SinhSavedIntermediates(Function):
        @staticmethod
        def forward(ctx, x):
            expx, expnegx = torch.exp(x), torch.exp(-x)
            ctx.save_for_backward(expx, expnegx)
            return (expx - expnegx) / 2

        @staticmethod
        def backward(ctx, grad_y):
            expx, expnegx = ctx.saved_tensors
            return grad_y * (expx + expnegx) / 2

    x = torch.tensor([0.1, 1.3], dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(SinhSavedIntermediates.apply(x).sum(), x, create_graph=True)
    assert grad_x.requires_grad is False
    assert not gradgradcheck(SinhSavedIntermediates.apply, (x,), raise_exception=False)


def test_saved_input_gives_second_derivative_sinh(lab):
    made = lab.run(lesson.saved_input)
    values = (0.5, -1.0, 2.0)
    assert made["grad_x"].cpu().tolist() == pytest.approx([math.cosh(v) for v in values])
    assert made.names["grad_x"].requires_grad is True  # it has a graph: grad_y * cosh(x)
    assert made["x.grad"].cpu().tolist() == pytest.approx([math.sinh(v) for v in values])
    assert made["passed"] is True
    sinh = made.names["Sinh"]
    x = torch.tensor([0.1, -1.3, 0.0], dtype=torch.float64, requires_grad=True)
    assert gradcheck(sinh.apply, (x,)) and gradgradcheck(sinh.apply, (x,))


def test_once_differentiable_first_order_and_the_error(lab):
    made = lab.run(lesson.once_differentiable_backward)
    assert made["grad_x"].cpu().tolist() == pytest.approx([4 * v**3 for v in (0.5, -1.0, 2.0)])
    assert_caught(made["error"], RuntimeError,
                  "trying to differentiate twice a function that was marked with @once_differentiable")


def test_the_printed_code_shows_the_function(lab):
    lab.run(lesson.square_function)
    printed = lab.stream.getvalue()
    for line in ("class Square(Function):", "ctx.save_for_backward(x)", "(x,) = ctx.saved_tensors",
                 "y = Square.apply(x)", "y.sum().backward()"):
        assert line in printed, line
    assert "lab.check" not in printed
