"""06 · custom Function: write forward and backward yourself, and let gradcheck judge the backward.

A torch.autograd.Function is an op whose backward you write by hand. The lesson checks one with
gradcheck, shows a wrong one that autograd trusts, gradcheck in float32, what a backward needs
for a second derivative (it must itself be differentiable), and @once_differentiable, which makes
a second derivative raise instead.
"""

# %% Setup
import math

import torch
from torch.autograd import Function, gradcheck, gradgradcheck
from torch.autograd.function import once_differentiable

from tensor_features.lab import Lab, Try

lab = Lab.start("06 · custom Function", __doc__, __name__)


# %% [1] A custom Function, checked by gradcheck
# A torch.autograd.Function is an op whose backward you write by hand. torch.autograd.gradcheck
# compares that backward with central finite differences; here on a float64 input, the precision
# its defaults are meant for.
def square_function(lab: Lab) -> None:
    """Square as a custom Function: save x in forward, use it in backward; gradcheck in float64"""
    class Square(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)  # backward needs x: d(x²)/dx = 2x
            y = x * x
            return y

        @staticmethod
        def backward(ctx, grad_y):
            (x,) = ctx.saved_tensors
            grad_x = grad_y * 2 * x  # chain rule: dL/dx = dL/dy · dy/dx
            return grad_x

    x = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = Square.apply(x)
    y.sum().backward()
    lab.check(x.grad, [1.0, -3.0, 4.0], "2x at x = [0.5, -1.5, 2]")
    lab.check(type(y.grad_fn).__name__, "SquareBackward",
              "apply() recorded a node named after the Function")
    # gradcheck calls backward with grad_y = each basis vector in turn (one Jacobian row each) and
    # compares the rows with central differences (torch/autograd/gradcheck.py).
    passed = gradcheck(Square.apply, (x,), raise_exception=False)
    lab.check(passed, True, "backward agrees with float64 central differences")


lab.run(square_function)


# %% [2] A wrong backward: autograd trusts it, gradcheck does not
# Autograd trusts a Function: a wrong backward gives wrong gradients without a word, so
# gradcheck compares it with finite differences.
def wrong_backward(lab: Lab) -> None:
    """A backward that says 3x where 2x is right"""
    class WrongSquare(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            y = x * x
            return y

        @staticmethod
        def backward(ctx, grad_y):
            (x,) = ctx.saved_tensors
            grad_x = grad_y * 3 * x  # wrong on purpose: d(x²)/dx is 2x
            return grad_x

    x = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    WrongSquare.apply(x).sum().backward()
    lab.check(x.grad, [1.5, -4.5, 6.0],
              "3x: .backward() uses whatever your backward returns, without complaint")
    with lab.expect_error("Jacobian mismatch for output 0 with respect to input 0",
                          "finite differences give diag(2x), the backward gives diag(3x)"):
        gradcheck(WrongSquare.apply, (x,))


lab.run(wrong_backward)


# %% [3] gradcheck in float32
# gradcheck's defaults are meant for float64: in float32 it warns and fails, and the cell shows
# why: x ± eps rounds to a different step.
def float32_gradcheck(lab: Lab) -> None:
    """gradcheck in float32: a warning, a failure, and why a larger eps fixes it"""
    x32 = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float32, requires_grad=True)
    # The defaults (eps 1e-6, atol 1e-5, rtol 1e-3) are meant for float64
    # (torch/autograd/gradcheck.py).
    with lab.expect_warning("not a double precision floating point",
                            "gradcheck warns for a float32 input"):
        with lab.expect_error("Jacobian mismatch",
                              "float32 finite differences with eps = 1e-6 are off by up to 5%"):
            gradcheck(torch.square, (x32,))
    # gradcheck writes x ± eps into the float32 input. float32 numbers are 2**-22 apart from 2 up
    # to 4, and 2**-23 apart from 1 up to 2.
    two = torch.tensor(2.0, dtype=torch.float32)
    step_up = (two + 1e-6) - two
    lab.check(step_up, 4 * 2**-22, "1e-6 rounds to 4 steps of 2**-22: 4 × 2**-22 = 9.54e-7",
              atol=0)
    step_down = two - (two - 1e-6)
    lab.check(step_down, 8 * 2**-23, "below 2, to 8 steps of 2**-23: the same 9.54e-7", atol=0)
    central_difference = (torch.square(two + 1e-6) - torch.square(two - 1e-6)) / (2 * 1e-6)
    lab.check(central_difference, 2 * 2.0 * (4 * 2**-22) / 1e-6,
              "2x · 9.54e-7 / 1e-6 = 3.81, not 4: divided by 2e-6, but the steps taken add up "
              "to 2 × 9.54e-7", rtol=1e-6)
    with lab.expect_warning("not a double precision floating point",
                            "still float32, still the warning"):
        default_eps_loose_atol = gradcheck(torch.square, (x32,), atol=1e-3,
                                           raise_exception=False)
        loose = gradcheck(torch.square, (x32,), eps=1e-3, raise_exception=False)
    lab.check(default_eps_loose_atol, False,
              "atol alone does not help: the error is in the step, 0.19 at x = 2")
    lab.check(loose, True, "eps = 1e-3 alone, default tolerances: rounding moves the step by at "
              "most 2**-23, about 1e-4 of it")


lab.run(float32_gradcheck)


# %% [4] Intermediates kept on ctx: no double backward
# For a second derivative the backward must itself be differentiable: it must be computed from
# tensors autograd can trace back to the inputs. forward's intermediates are not (forward records
# no graph), whether kept on ctx or with save_for_backward, unless forward also returns them as
# outputs (the tutorial's fix).
def intermediates_on_ctx(lab: Lab) -> None:
    """sinh with forward's exp(x), exp(-x) kept as ctx attributes: the gradient has no graph"""
    # The tutorial's "what NOT to do" (pytorch/tutorials, "Double Backward with Custom Functions",
    # section "Saving Intermediate Results: What not to do";
    # intermediate_source/custom_function_double_backward_tutorial.rst).
    class SinhOnCtx(Function):
        @staticmethod
        def forward(ctx, x):
            expx, expnegx = torch.exp(x), torch.exp(-x)  # forward records no graph
            ctx.expx, ctx.expnegx = expx, expnegx
            y = (expx - expnegx) / 2
            return y

        @staticmethod
        def backward(ctx, grad_y):
            grad_x = grad_y * (ctx.expx + ctx.expnegx) / 2  # cosh(x), from tensors with no graph
            return grad_x

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(SinhOnCtx.apply(x).sum(), x, create_graph=True)
    lab.check(grad_x, [math.cosh(0.5), math.cosh(-1.0), math.cosh(2.0)],
              "the first derivative is right: cosh(x)")
    lab.check(grad_x.requires_grad, False,
              "but create_graph found nothing to record: exp(x) has no path to x")
    with lab.expect_error("element 0 of tensors does not require grad",
                          "a second backward has no graph to walk"):
        grad_x.sum().backward()
    with lab.expect_error("Jacobian mismatch for output 0 with respect to input 0",
                          "the recorded graph says 0; finite differences of the backward say "
                          "grad_y · sinh(x)"):
        gradgradcheck(SinhOnCtx.apply, (x,))


lab.run(intermediates_on_ctx)


# %% [5] Save the input, compute in backward: double backward works
# This backward recomputes from the saved input instead: cosh(x), computed from x itself, is
# recorded when create_graph=True, so the gradient can be differentiated again.
def saved_input(lab: Lab) -> None:
    """sinh that saves x with save_for_backward and computes cosh(x) in backward"""
    class Sinh(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            y = torch.sinh(x)
            return y

        @staticmethod
        def backward(ctx, grad_y):
            (x,) = ctx.saved_tensors
            grad_x = grad_y * torch.cosh(x)  # with create_graph=True, this op is recorded
            return grad_x

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(Sinh.apply(x).sum(), x, create_graph=True)
    lab.check(grad_x, [math.cosh(0.5), math.cosh(-1.0), math.cosh(2.0)], "cosh(x)")
    lab.check(type(grad_x.grad_fn).__name__, "MulBackward0",
              "the gradient has a graph: grad_y * cosh(x)")
    grad_x.sum().backward()
    lab.check(x.grad, [math.sinh(0.5), math.sinh(-1.0), math.sinh(2.0)], "d/dx cosh(x) = sinh(x)")
    passed = gradgradcheck(Sinh.apply, (x,), raise_exception=False)
    lab.check(passed, True, "second derivatives agree with finite differences of the backward")


lab.run(saved_input)


# %% [6] @once_differentiable
# @once_differentiable marks a backward that is not to be differentiated: it runs under no_grad,
# and a second derivative through it raises.
def once_differentiable_backward(lab: Lab) -> None:
    """@once_differentiable: a second derivative through it raises"""
    class Square(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            y = x * x
            return y

        @staticmethod
        @once_differentiable  # runs backward under no_grad (torch/autograd/function.py)
        def backward(ctx, grad_y):
            (x,) = ctx.saved_tensors
            grad_x = grad_y * 2 * x
            return grad_x

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = Square.apply(x)
    z = (y**2).sum()  # so the gradient reaching Square's backward, 2y, itself requires grad
    (grad_x,) = torch.autograd.grad(z, x, create_graph=True)
    lab.check(grad_x, [4 * 0.5**3, 4 * (-1.0) ** 3, 4 * 2.0**3],
              "d(x⁴)/dx = 4x³: the first derivative is fine")
    with lab.expect_error("trying to differentiate twice a function that was marked with "
                          "@once_differentiable",
                          "its incoming gradient required grad, so the result is tied to a node "
                          "that raises"):
        grad_x.sum().backward()


lab.run(once_differentiable_backward)


# %% The end
TRIES = [
    Try("the same values, computed on the GPU", flags="--device cuda", needs_cuda=True),
    Try("y.sum() feeds backward grad_y = 1, so x.grad is still right; gradcheck feeds other "
        "grad_y and fails",
        edit=("grad_x = grad_y * 2 * x  # chain rule", "grad_x = 2 * x  # chain rule"),
        where=square_function),
    Try("without eps=1e-3, loose is the default gradcheck again: eps = 1e-6 misses by 0.19 at "
        "x = 2, and the check of loose fails",
        edit=("(x32,), eps=1e-3, raise_exception", "(x32,), raise_exception"),
        where=float32_gradcheck),
    Try("the gradient reaching backward is all ones and needs no grad: grad_x is 2x, not 4x³, "
        "and the second backward fails with 'does not require grad' instead",
        edit=("z = (y**2).sum()", "z = y.sum()"),
        where=once_differentiable_backward),
]
lab.finish(TRIES)
