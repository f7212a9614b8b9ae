"""The trainer's mathematics: feature maps and their derivatives, the losses, f′(x) for every
sample at once, the exact optimum and the spectrum of the loss's Hessian.

Pure functions and small dataclasses: nothing here prints, reads the command line or keeps
state between calls. fitting.py trains, report.py prints; lessons import from here too.

The model is f(x) = Φ(x) w, with Φ a fixed feature map (monomials or Legendre polynomials) or a
learned extractor. Every loss here is

    L(w) = mean((f(x) − y)²) + weight · mean((f′(x) − t(x))²)

with weight 0 for mse (the original loss), t = 2x for sobolev (the derivative of the clean
curve x²) and t = 0 for smooth (a penalty on the slope); losses.py holds them, one registry.
For a fixed feature map f′(x) = Φ′(x) w is linear in w, so L stays a quadratic in w and its
minimum is one least-squares solve on the stacked rows [Φ; √weight Φ′] against [y; √weight t].
problem.py puts these pieces together into the problem of one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tensor_features.trainer.losses import Loss  # tests and bench import it from here too
from tensor_features.utils import feature_map  # where the original description puts it

# -- feature maps ---------------------------------------------------------------------------------


def feature_derivative_map(x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Φ′ for the monomials: [1, 2x, 3x², ..., D x^(D-1)], the column-wise d/dx of feature_map."""
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    return torch.cat([k * x ** (k - 1) for k in range(1, degree + 1)], dim=1)


def _legendre_columns(t: torch.Tensor, degree: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """P_1..P_D at t and their derivatives, by Bonnet's recursion and its derivative:

    (k+1) P_{k+1} = (2k+1) t P_k − k P_{k−1}   and   P′_{k+1} = P′_{k−1} + (2k+1) P_k.
    """
    previous, current = torch.ones_like(t), t
    d_previous, d_current = torch.zeros_like(t), torch.ones_like(t)
    values, slopes = [current], [d_current]
    for k in range(1, degree):
        previous, current = current, ((2 * k + 1) * t * current - k * previous) / (k + 1)
        d_previous, d_current = d_current, d_previous + (2 * k + 1) * previous
        values.append(current)
        slopes.append(d_current)
    return values, slopes


def legendre_feature_map(x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Legendre features [P1(x) - P1(0), ..., P_D(x) - P_D(0)] of a column x in [-1, 1].

    Each column is a degree-k polynomial with no constant term, so together they span
    exactly the original monomials [x, ..., x^D] and reach the same least-squares optimum.
    Unlike the monomials they are nearly orthogonal on [-1, 1], so the Gram matrix is far
    better conditioned (tests/trainer/test_model.py measures it at D = 3 and 6).
    """
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    values, _ = _legendre_columns(x, degree)
    at_zero, _ = _legendre_columns(torch.zeros_like(x[:1]), degree)
    return torch.cat(values, dim=1) - torch.cat(at_zero, dim=1)


def legendre_derivative_map(x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Φ′ for the Legendre features: [P1′(x), ..., P_D′(x)] (the constants P_k(0) drop out)."""
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    _, slopes = _legendre_columns(x, degree)
    return torch.cat(slopes, dim=1)


BASES = {"monomial": (feature_map, feature_derivative_map),
         "legendre": (legendre_feature_map, legendre_derivative_map)}


def make_features(x: torch.Tensor, degree: int, basis: str = "monomial") -> torch.Tensor:
    """Φ for a fixed basis, 'monomial' or 'legendre' (a learned extractor is a module instead)."""
    return BASES[basis][0](x, degree)


def make_feature_derivatives(x: torch.Tensor, degree: int, basis: str = "monomial") -> torch.Tensor:
    """Φ′ = dΦ/dx column by column, for the same bases as make_features."""
    return BASES[basis][1](x, degree)


def initial_weights(degree: int, seed: int, device: torch.device) -> torch.Tensor:
    """w ~ N(0, 1) of shape (degree, 1), as in the original, from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed + 1)
    # Drawn on the CPU, where the generator is, whatever the default device, then moved.
    return torch.randn(degree, 1, generator=generator, device="cpu").to(device)


# -- the losses -------------------------------------------------------------------------------------


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((prediction - target)²): the original loss, and every loss term here."""
    return ((prediction - target) ** 2).mean()


def batched_derivative(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, create_graph: bool = True,
                       retain_graph: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), f′(x)) with f′(x_i) = ∂f(x_i)/∂x_i for every sample i, from one VJP.

    autograd.grad(f(x).sum(), x) returns row i = Σ_j ∂f(x_j)/∂x_i: the per-sample derivative
    only when sample j's output does not depend on x_i (no BatchNorm in train mode). With
    create_graph=True the derivative is itself a function of w in the graph, so a loss built
    from it can be differentiated again (loss.backward() is then a double backward).
    """
    x = x.detach().requires_grad_()
    values = f(x)
    (derivative,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph, retain_graph=retain_graph)
    return values, derivative


def derivative_by_vmap(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f′(x_i) a second way: torch.func.grad of f at one sample, vmapped over the samples.

    Each sample runs alone, as a batch of one, so nothing can couple the samples.
    """
    def f_one(x_i: torch.Tensor) -> torch.Tensor:
        return f(x_i.reshape(1, 1)).reshape(())

    return torch.func.vmap(torch.func.grad(f_one))(x)


@dataclass
class LossTerms:
    """A loss value and its parts: total = data + weight · derivative (derivative None for mse)."""

    total: torch.Tensor
    data: torch.Tensor
    derivative: torch.Tensor | None = None


def loss_terms(loss: Loss, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               create_graph: bool = True, retain_graph: bool | None = None) -> LossTerms:
    """The loss of predictor f on (x, y); f′ from batched_derivative when the loss needs it."""
    if not loss.uses_derivative:
        data = mse(f(x), y)
        return LossTerms(data, data)
    values, slope = batched_derivative(f, x, create_graph, retain_graph)
    data, derivative = mse(values, y), mse(slope, loss.derivative_target(x))
    return LossTerms(data + loss.weight * derivative, data, derivative)


def linear_model(features: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor):
    """f(x) = features(x) @ w, as a function of x."""
    return lambda inputs: features(inputs) @ w


# -- the exact answer and the Hessian's spectrum --------------------------------------------------


@dataclass
class Optimum:
    w: torch.Tensor
    loss: float
    hessian_eigenvalues: torch.Tensor  # of the loss's Hessian, ascending
    data_loss: float | None = None  # mean((Φw* - y)²) alone (equal to loss for mse)
    derivative_loss: float | None = None  # mean((Φ′w* - t)²) alone (None for mse)
    # A tolerance for "close" where 1% of the optimum would be smaller: float32's eps times the mean
    # of the squared targets (y², plus weight · t² for a derivative loss), the loss's scale. With
    # --noise 0 the optimum is exactly 0 and "within 1%" of it would ask for exactly 0. It is a
    # chosen tolerance, not a limit of float32: near the optimum a float32 loss can be far closer.
    resolution: float = 0.0

    @property
    def condition_number(self) -> float:
        return (self.hessian_eigenvalues[-1] / self.hessian_eigenvalues[0]).item()

    @property
    def max_stable_lr(self) -> float:
        """Gradient descent on a quadratic converges from every start iff lr < 2 / λmax(Hessian)."""
        return 2.0 / self.hessian_eigenvalues[-1].item()

    @property
    def best_lr(self) -> float:
        """The fixed step 2 / (λmax + λmin) that minimises the worst-case contraction."""
        return 2.0 / (self.hessian_eigenvalues[-1] + self.hessian_eigenvalues[0]).item()

    def contraction(self, lr: float) -> float:
        """Per-epoch factor of ‖w - w*‖ in the worst direction: max |1 - lr λ|."""
        return (1 - lr * self.hessian_eigenvalues).abs().max().item()

    def limiting_eigenvalue(self, lr: float) -> float:
        """The eigenvalue λ whose direction attains max |1 - lr λ| (λmin for lr ≤ best_lr, else λmax)."""
        factors = (1 - lr * self.hessian_eigenvalues).abs()
        return self.hessian_eigenvalues[int(factors.argmax())].item()


@dataclass(frozen=True)
class DerivativeRows:
    """The extra rows of a derivative loss: weight · mean((Φ′w − target)²)."""

    phi_prime: torch.Tensor
    target: torch.Tensor
    weight: float


def least_squares_optimum(phi: torch.Tensor, y: torch.Tensor, rows_per_chunk: int = 2**16,
                          derivative: DerivativeRows | None = None) -> Optimum:
    """The exact minimiser of mean((Φw - y)²) [+ weight · mean((Φ′w - t)²)] and its Hessian's spectrum.

    Both terms average over the same n samples, so the loss is (1/n)‖Aw − b‖² with the stacked
    rows A = [Φ; √weight Φ′], b = [y; √weight t]: one least-squares problem, solved here by its
    normal equations AᵀA w = Aᵀb = (ΦᵀΦ + weight Φ′ᵀΦ′) w = Φᵀy + weight Φ′ᵀt. The d×d matrix AᵀA
    is also the Hessian (times 2/n), so one pass gives both the answer and the spectrum that
    explains gradient descent's speed. It is summed in float64 a chunk of rows at a time: no
    float64 copy of Φ (at n = 2**22 that copy alone would be 96 MB).
    """
    n, d = phi.shape
    gram = torch.zeros(d, d, dtype=torch.float64, device=phi.device)
    rhs = torch.zeros(d, 1, dtype=torch.float64, device=phi.device)
    blocks = [(phi, y, 1.0)]
    if derivative is not None:
        blocks.append((derivative.phi_prime, derivative.target, derivative.weight))
    chunked = [(list(zip(a.detach().split(rows_per_chunk), b.detach().split(rows_per_chunk))), weight)
               for a, b, weight in blocks]
    for chunks, weight in chunked:
        for a_rows, b_rows in chunks:
            a64, b64 = a_rows.double(), b_rows.double()
            gram += weight * (a64.T @ a64)
            rhs += weight * (a64.T @ b64)
    w = torch.linalg.solve(gram, rhs)
    sums = [sum((((a.double() @ w) - b.double()) ** 2).sum() for a, b in chunks).item() for chunks, _ in chunked]
    data_loss = sums[0] / n
    derivative_loss = sums[1] / n if derivative is not None else None
    loss = data_loss + (derivative.weight * derivative_loss if derivative is not None else 0.0)
    hessian = 2 * gram / n
    scale = sum(weight * sum((b.double() ** 2).sum() for _, b in chunks).item() for chunks, weight in chunked) / n
    resolution = torch.finfo(torch.float32).eps * scale
    return Optimum(w.cpu(), loss, torch.linalg.eigvalsh(hessian).cpu(), data_loss, derivative_loss, resolution)


def epochs_to_within(losses: list[float], target: float, tolerance: float = 0.01,
                     floor: float = 0.0) -> int | None:
    """First epoch whose loss is within `tolerance` (relative) of target, or within `floor` (absolute)
    where that is larger (a target of 0 has no relative neighbourhood); None if no epoch is."""
    for epoch, loss in enumerate(losses):
        if loss <= target + max(tolerance * target, floor):
            return epoch
    return None
