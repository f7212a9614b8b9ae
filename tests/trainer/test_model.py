"""The trainer's mathematics (tensor_features/trainer/model.py) against oracles written here: textbook
polynomials and their derivatives, gradcheck and gradgradcheck in float64, numpy.linalg.lstsq on a
stacked system this file builds, and numpy's eigenvalues."""

import math

import numpy as np
import pytest
import torch

from tensor_features.trainer import model
from tensor_features.load_data import load_data

MUTANTS = [
    ("tensor_features/trainer/model.py", "torch.cat([k * x ** (k - 1) for k", "torch.cat([x ** (k - 1) for k"),
    ("tensor_features/trainer/model.py", "d_previous + (2 * k + 1) * previous", "d_previous + (2 * k - 1) * previous"),
    ("tensor_features/trainer/losses.py", "    return 2 * x\n", "    return x\n"),  # sobolev's target
    ("tensor_features/trainer/model.py", "return LossTerms(data + loss.weight * derivative, data, derivative)",
     "return LossTerms(data + derivative, data, derivative)"),
    ("tensor_features/trainer/model.py", "x, create_graph=create_graph, retain_graph=retain_graph)",
     "x, create_graph=False, retain_graph=True)"),
    ("tensor_features/trainer/model.py", "gram += weight * (a64.T @ a64)", "gram += a64.T @ a64"),
    ("tensor_features/trainer/model.py", "hessian = 2 * gram / n", "hessian = gram / n"),
    ("tensor_features/trainer/model.py", "return 2.0 / (self.hessian_eigenvalues[-1] + self.hessian_eigenvalues[0]).item()",
     "return 1.0 / (self.hessian_eigenvalues[-1] + self.hessian_eigenvalues[0]).item()"),
    ("tensor_features/trainer/model.py", "self.hessian_eigenvalues[int(factors.argmax())]",
     "self.hessian_eigenvalues[int(factors.argmin())]"),
    ("tensor_features/trainer/model.py", "if loss <= target + max(tolerance * target, floor):",
     "if loss < target - max(tolerance * target, floor):"),
    ("tensor_features/trainer/model.py", "if loss <= target + max(tolerance * target, floor):",
     "if loss <= target + tolerance * target:"),
    ("tensor_features/trainer/model.py", "resolution = torch.finfo(torch.float32).eps * scale",
     "resolution = torch.finfo(torch.float16).eps * scale"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- model.py
    # feature_map (utils.py, where the original puts it; model.py re-exports it): powers 0..D-1 instead of 1..D
    ('tensor_features/utils.py', 'return torch.cat([x**k for k in range(1, degree + 1)], dim=1)', 'return torch.cat([x**k for k in range(0, degree)], dim=1)'),
    # feature_derivative_map: the factor k dropped: Φ′ = [1, x, x², ...]
    ('tensor_features/trainer/model.py', 'return torch.cat([k * x ** (k - 1) for k in range(1, degree + 1)], dim=1)', 'return torch.cat([x ** (k - 1) for k in range(1, degree + 1)], dim=1)'),
    # sobolev derivative target is the curve x² instead of its derivative 2x
    ('tensor_features/trainer/losses.py', '    return 2 * x\n', '    return x**2\n'),
    # least_squares_optimum: the Hessian is ΦᵀΦ/n, missing the 2: eigenvalues halved, max_stable_lr doubled
    ('tensor_features/trainer/model.py', '    hessian = 2 * gram / n\n', '    hessian = gram / n\n'),
    # least_squares_optimum: the derivative rows' weight dropped from the Gram matrix (smooth's λ = 0.1 treated as 1 there)
    ('tensor_features/trainer/model.py', '            gram += weight * (a64.T @ a64)\n', '            gram += a64.T @ a64\n'),
    # batched_derivative: create_graph forced off: the derivative term has no path back to w
    ('tensor_features/trainer/model.py', '(derivative,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph, retain_graph=retain_graph)', '(derivative,) = torch.autograd.grad(values.sum(), x, create_graph=False, retain_graph=retain_graph)'),
    # Optimum.best_lr: 2/λmax instead of 2/(λmax+λmin) (the stability edge, not the best step)
    ('tensor_features/trainer/model.py', 'return 2.0 / (self.hessian_eigenvalues[-1] + self.hessian_eigenvalues[0]).item()', 'return 2.0 / self.hessian_eigenvalues[-1].item()'),
    # Legendre derivative recursion with 2k-1 instead of 2k+1
    ('tensor_features/trainer/model.py', 'd_previous, d_current = d_current, d_previous + (2 * k + 1) * previous', 'd_previous, d_current = d_current, d_previous + (2 * k - 1) * previous'),
    # fastest_seconds: the slowest run instead of the fastest
    ('tensor_features/utils.py', '        return min(times)\n', '        return max(times)\n'),
    # ---------------------------------------------------------------- the trainer's new rooms (blind)
    # losses.py: sobolev's target becomes x instead of the clean slope 2x: the sobolev exact optimum, w* and the derivative term change (report numbers, derivative_target(x) != 2x)
    ('tensor_features/trainer/losses.py', '    return 2 * x\n', '    return x\n'),
]


def original_problem(dtype=torch.float32):
    x, y = load_data(100, 0.1, seed=0, dtype=dtype)
    return x, y


# -- feature maps ---------------------------------------------------------------------------------

def test_feature_map_is_the_original_formula_where_the_description_puts_it():
    # The original description: `from utils import feature_map` (utils.py), then
    # `torch.cat([x, x**2, x**3], dim=1)`; the same ops in the same order, so equal bit for bit.
    from tensor_features import utils

    x = torch.linspace(-1, 1, 7).unsqueeze(1)
    assert torch.equal(utils.feature_map(x), torch.cat([x, x**2, x**3], dim=1))
    assert model.feature_map is utils.feature_map


def test_monomial_derivatives_are_the_textbook_ones():
    x = torch.linspace(-1, 1, 9, dtype=torch.float64).unsqueeze(1)
    expected = torch.cat([torch.ones_like(x), 2 * x, 3 * x**2, 4 * x**3], dim=1)
    assert torch.allclose(model.feature_derivative_map(x, 4), expected)


def test_legendre_features_and_derivatives_are_the_textbook_polynomials():
    x = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1)
    # P1 = x, P2 = (3x² - 1)/2, P3 = (5x³ - 3x)/2, P4 = (35x⁴ - 30x² + 3)/8, each minus its value at 0.
    expected = torch.cat([x, 1.5 * x**2, (5 * x**3 - 3 * x) / 2, (35 * x**4 - 30 * x**2) / 8], dim=1)
    assert torch.allclose(model.legendre_feature_map(x, 4), expected)
    slopes = torch.cat([torch.ones_like(x), 3 * x, (15 * x**2 - 3) / 2, (140 * x**3 - 60 * x) / 8], dim=1)
    assert torch.allclose(model.legendre_derivative_map(x, 4), slopes)


def test_derivative_maps_match_central_differences_at_degree_8():
    x = torch.linspace(-0.9, 0.9, 13, dtype=torch.float64).unsqueeze(1)
    h = 1e-6
    for basis in ("monomial", "legendre"):
        numeric = (model.make_features(x + h, 8, basis) - model.make_features(x - h, 8, basis)) / (2 * h)
        assert torch.allclose(model.make_feature_derivatives(x, 8, basis), numeric, atol=1e-6), basis


def test_legendre_is_better_conditioned_as_its_docstring_says():
    x, y = original_problem()
    kappa = {(basis, degree): model.least_squares_optimum(model.make_features(x, degree, basis), y).condition_number
             for basis in ("monomial", "legendre") for degree in (3, 6)}
    # Oracle: the Gram matrix's eigenvalues from numpy.
    for (basis, degree), value in kappa.items():
        phi = model.make_features(x, degree, basis).double().numpy()
        eigenvalues = np.linalg.eigvalsh(phi.T @ phi)
        assert value == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-6)
    assert kappa["legendre", 3] < 4 < 25 < kappa["monomial", 3]
    assert kappa["legendre", 6] < 10 < 2000 < kappa["monomial", 6]


# -- the losses -----------------------------------------------------------------------------------

def test_mse_gradient_matches_the_analytic_formula_and_gradcheck():
    x, y = original_problem()
    phi = model.feature_map(x)
    w0 = model.initial_weights(3, 0, torch.device("cpu"))
    w = w0.clone().requires_grad_()
    model.mse(phi @ w, y).backward()
    assert torch.allclose(w.grad, 2 / len(x) * phi.T @ (phi @ w0 - y), atol=1e-6)  # ∇ mean((Φw - y)²)
    w64 = w0.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: model.mse(phi.double() @ v, y.double()), (w64,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_batched_routes_give_the_analytic_derivative(dtype):
    x = torch.linspace(-1, 1, 41, dtype=dtype).unsqueeze(1)
    w = torch.tensor([[0.3], [-1.2], [0.7]], dtype=dtype, requires_grad=True)
    analytic = w[0] + 2 * w[1] * x + 3 * w[2] * x**2  # f = w₁x + w₂x² + w₃x³
    f = model.linear_model(model.feature_map, w)
    values, batched = model.batched_derivative(f, x)
    # Each side is a different route to the same three terms (autograd's pow and mm backward, the
    # matmul Φw, the formulas typed here), each term rounded at most 5 times on its way (x³ = x·x·x,
    # ×w, two adds; 3·x², ×w, two adds), so each side is within γ₅·Σ|terms| of the exact value, in any
    # order of the adds, with or without FMA (Higham's bound, γ₅ = 5u/(1 − 5u), u = eps/2); two sides
    # within twice that. At x = 1 f′ = 0.3 − 2.4 + 2.1 cancels to 0 while Σ|terms| = 4.8: up to
    # 2.9e-6 in float32, more than an absolute 1e-6 on a CPU whose matmul rounds differently.
    u = torch.finfo(dtype).eps / 2
    gamma = 5 * u / (1 - 5 * u)
    a, x64 = w.detach().double().abs(), x.double()  # the bounds and the gaps in float64
    slope_bound = 2 * gamma * (a[0] + 2 * a[1] * x64.abs() + 3 * a[2] * x64**2)
    value_bound = 2 * gamma * (a[0] * x64.abs() + a[1] * x64**2 + a[2] * x64.abs() ** 3)

    def gap(one, other):
        return (one.detach().double() - other.detach().double()).abs()

    assert (gap(batched, analytic) <= slope_bound).all()
    assert (gap(model.derivative_by_vmap(f, x), analytic) <= slope_bound).all()
    assert (gap(values, x * w[0] + x**2 * w[1] + x**3 * w[2]) <= value_bound).all()
    assert batched.requires_grad  # create_graph=True: f′ is a function of w in the graph
    _, detached = model.batched_derivative(f, x, create_graph=False)
    assert not detached.requires_grad


def written_out_loss(name, weight, w, x, y):
    """The losses written by hand from the issue's formulas, with f′ = Φ′w typed in."""
    f = x * w[0] + x**2 * w[1] + x**3 * w[2]
    slope = w[0] + 2 * x * w[1] + 3 * x**2 * w[2]
    target = 2 * x if name == "sobolev" else 0 * x
    return ((f - y) ** 2).mean() + weight * ((slope - target) ** 2).mean()


@pytest.mark.parametrize("name, weight", [("mse", 0.0), ("sobolev", 0.7), ("smooth", 0.3)])
def test_each_loss_passes_gradcheck_and_gradgradcheck_in_float64(name, weight):
    x, y = original_problem(torch.float64)
    x, y = x[::5], y[::5]  # 20 points keep the numerical Jacobians quick
    loss = model.Loss(name, weight)
    w = torch.tensor([[0.2], [0.9], [-0.4]], dtype=torch.float64, requires_grad=True)

    def total(v):
        return model.loss_terms(loss, model.linear_model(model.feature_map, v), x, y).total

    assert total(w).item() == pytest.approx(written_out_loss(name, weight, w, x, y).item(), rel=1e-12)
    assert torch.autograd.gradcheck(total, (w,))
    assert torch.autograd.gradgradcheck(total, (w,))


def test_loss_rejects_unknown_names_and_bad_weights():
    for bad in [dict(name="huber"), dict(name="sobolev", weight=-1.0), dict(name="smooth", weight=math.nan),
                dict(name="sobolev", weight=math.inf)]:
        with pytest.raises(ValueError):
            model.Loss(**bad)


# -- the exact optimum ------------------------------------------------------------------------------

def stacked_lstsq(x, y, name, weight):
    """The oracle: the stacked system [Φ; √β Φ′] w ≈ [y; √β t] built here, solved by numpy (SVD-based)."""
    x64, y64 = x.double().numpy(), y.double().numpy()
    phi = np.hstack([x64, x64**2, x64**3])
    phi_prime = np.hstack([np.ones_like(x64), 2 * x64, 3 * x64**2])
    target = 2 * x64 if name == "sobolev" else np.zeros_like(x64)
    a = np.vstack([phi, math.sqrt(weight) * phi_prime])
    b = np.vstack([y64, math.sqrt(weight) * target])
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    loss = float(((a @ w - b) ** 2).sum() / len(x64))  # both terms are means over the same n points
    hessian_eigenvalues = np.linalg.eigvalsh(2 * a.T @ a / len(x64))
    return w, loss, hessian_eigenvalues


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("sobolev", 0.05), ("smooth", 0.1), ("smooth", 3.0)])
def test_optimum_matches_numpy_lstsq_on_the_stacked_rows(name, weight):
    x, y = original_problem(torch.float64)  # float64 data: the comparison is not about float32 rounding of Φ′
    loss = model.Loss(name, weight)
    rows = model.DerivativeRows(model.feature_derivative_map(x), loss.derivative_target(x), weight)
    w, best, eigenvalues = stacked_lstsq(x, y, name, weight)
    for rows_per_chunk in (7, 2**16):  # several chunks, and one
        optimum = model.least_squares_optimum(model.feature_map(x), y, rows_per_chunk, derivative=rows)
        assert np.allclose(optimum.w.numpy(), w, atol=1e-9)
        assert optimum.loss == pytest.approx(best, rel=1e-9)
        assert np.allclose(optimum.hessian_eigenvalues.numpy(), eigenvalues, rtol=1e-9)
    # The two terms, each at w*, from the formulas.
    phi_w = (x.double() * w[0, 0] + x.double() ** 2 * w[1, 0] + x.double() ** 3 * w[2, 0])
    assert optimum.data_loss == pytest.approx(((phi_w - y.double()) ** 2).mean().item(), rel=1e-9)
    assert optimum.loss == pytest.approx(optimum.data_loss + weight * optimum.derivative_loss, rel=1e-12)


def test_a_zero_weight_gives_the_mse_optimum_exactly():
    # Exact on every machine: weight 0 adds 0·(Φ′ᵀΦ′) and 0·(Φ′ᵀt) to the same Gram matrix and right-hand
    # side, computed by the same ops in the same order, and x + 0 is x in IEEE arithmetic; the solve,
    # the losses and eigvalsh then see identical inputs (and the loss adds 0·derivative_loss, exactly 0).
    x, y = original_problem()
    phi = model.feature_map(x)
    plain = model.least_squares_optimum(phi, y)
    for name in ("sobolev", "smooth"):
        loss = model.Loss(name, 0.0)
        rows = model.DerivativeRows(model.feature_derivative_map(x), loss.derivative_target(x), 0.0)
        zero = model.least_squares_optimum(phi, y, derivative=rows)
        assert torch.equal(zero.w, plain.w) and zero.loss == plain.loss
        assert torch.equal(zero.hessian_eigenvalues, plain.hessian_eigenvalues)


def test_optimum_properties_from_the_spectrum():
    optimum = model.Optimum(torch.zeros(3, 1), 1.0, torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64))
    assert optimum.condition_number == 8.0
    assert optimum.max_stable_lr == 0.5
    assert optimum.best_lr == pytest.approx(2 / 4.5)
    # max |1 - lr λ| over {0.5, 2, 4}, by hand: at lr 0.1 → 0.95 (λ = 0.5); at lr 0.45 → |1 - 1.8| = 0.8 (λ = 4).
    assert optimum.contraction(0.1) == pytest.approx(0.95) and optimum.limiting_eigenvalue(0.1) == 0.5
    assert optimum.contraction(0.45) == pytest.approx(0.8) and optimum.limiting_eigenvalue(0.45) == 4.0
    assert optimum.contraction(optimum.best_lr) == pytest.approx(7 / 9)  # (κ - 1)/(κ + 1) with κ = 8


def test_epochs_to_within_counts_from_zero():
    assert model.epochs_to_within([5.0, 2.0, 1.02, 1.005], 1.0) == 3
    assert model.epochs_to_within([1.01], 1.0) == 0
    assert model.epochs_to_within([2.0, 1.5], 1.0) is None


def test_epochs_to_within_takes_the_absolute_floor_where_it_is_larger():
    # An optimum of 0 (noise 0) has no relative neighbourhood: only the floor can be met.
    assert model.epochs_to_within([1e-3, 1e-9, 0.0], 0.0) == 2
    assert model.epochs_to_within([1e-3, 1e-9, 0.0], 0.0, floor=1e-8) == 1
    # Where 1% of the target is the larger, the floor changes nothing.
    assert model.epochs_to_within([1.02, 1.005], 1.0, floor=1e-8) == 1


def test_the_optimum_knows_the_float32_resolution_of_its_loss():
    x = torch.linspace(-1, 1, 50).unsqueeze(1)
    y = x**2
    phi = torch.cat([x, x**2, x**3], dim=1)
    eps32 = float(np.finfo(np.float32).eps)
    plain = model.least_squares_optimum(phi, y)
    assert plain.resolution == pytest.approx(eps32 * float((y.double() ** 2).mean()), rel=1e-9)  # eps × mean(y²)
    target = 2 * x
    rows = model.DerivativeRows(torch.cat([torch.ones_like(x), 2 * x, 3 * x**2], dim=1), target, 0.5)
    stacked = model.least_squares_optimum(phi, y, derivative=rows)
    expected = eps32 * (float((y.double() ** 2).mean()) + 0.5 * float((target.double() ** 2).mean()))
    assert stacked.resolution == pytest.approx(expected, rel=1e-9)


def test_fastest_seconds_is_the_fastest_run_on_one_thread(monkeypatch):
    # A scripted clock (no real timing): runs of 5, 2 and 9 ticks; the helper must pick 2, run
    # the function once more as a warm-up, use one thread while timing and restore the count.
    import time

    from tensor_features import utils

    ticks = iter([0.0, 5.0, 10.0, 12.0, 20.0, 29.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    threads, calls, seen = torch.get_num_threads(), [], []

    def work():
        calls.append(1)
        seen.append(torch.get_num_threads())

    assert utils.fastest_seconds(work, repeats=3) == 2.0
    assert len(calls) == 4 and set(seen) == {1}
    assert torch.get_num_threads() == threads


def test_display_images_writes_the_whole_grid_or_nothing(tmp_path, monkeypatch):
    import torchvision.utils

    from tensor_features import utils

    batch = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    written = utils.display_images(batch, tmp_path / "grid.png", nrow=3)
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(tmp_path.iterdir()) == [written]

    def interrupted(tensor, fp, format=None):
        open(fp, "wb").write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torchvision.utils, "save_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        utils.display_images(batch, tmp_path / "other.png")
    assert sorted(tmp_path.iterdir()) == [written], "no half-written grid, no temporary file"
