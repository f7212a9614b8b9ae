"""The trainer (tensor_features/train.py): each epoch against its gradient written out here, the fits
against torch.linalg.lstsq and numpy, the create_graph and BatchNorm observations against loops of
autograd.grad written here, every number the report prints against the test's own computation, bad
input, plots, the verdict, and bench row 10. Runs in process; one terminal run."""

import argparse
import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import DEVICES, terminal_usage_error, usage_error
from tensor_features import model, train
from tensor_features.config import TrainConfig
from tensor_features.load_data import load_data

MUTANTS = [
    ("tensor_features/train.py", "w.grad.zero_()  # without this, next epoch's backward adds to this gradient",
     "w.grad.mul_(0.5)  # without this, next epoch's backward adds to this gradient"),
    ("tensor_features/train.py", "terms.total.backward(inputs=[w])  # x requires grad too",
     "terms.data.backward(inputs=[w])  # x requires grad too"),
    ("tensor_features/train.py", "with torch.no_grad():  # the original update\n            w -= lr * w.grad",
     "with torch.no_grad():  # the original update\n            w -= 0.5 * lr * w.grad"),
    ("tensor_features/train.py", "best_rho = (kappa - 1) / (kappa + 1)", "best_rho = (kappa - 1) / kappa"),
    ("tensor_features/train.py", "{optimum.max_stable_lr / lr:.3g}× below", "{lr / optimum.max_stable_lr:.3g}× below"),
    ("tensor_features/train.py", "jacobian.diagonal().detach(), jacobian.sum(0).detach()",
     "jacobian.sum(1).detach(), jacobian.sum(0).detach()"),
    ("tensor_features/train.py", "by_formula = loss.weight * 2 / len(x)", "by_formula = loss.weight / len(x)"),
    ("tensor_features/train.py", "above = 100 * (fit_result.final_loss - result.optimum.loss) / result.optimum.loss",
     "above = 100 * (fit_result.final_loss - result.optimum.loss) / fit_result.final_loss"),
    ("tensor_features/train.py", "at_half = int(torch.argmin((curve.x - 0.5).abs()))",
     "at_half = int(torch.argmin((curve.x - 0.25).abs()))"),
    ("tensor_features/train.py", "rows = DerivativeRows(make_feature_derivatives(x, degree, basis)",
     "rows = DerivativeRows(make_features(x, degree, basis)"),
    ("tensor_features/train.py", '"sobolev": config.beta, "smooth": config.penalty',
     '"sobolev": config.penalty, "smooth": config.beta'),
    ("tensor_features/train.py", "optimizer = torch.optim.SGD(parameters(w), lr=lr)",
     "optimizer = torch.optim.SGD(parameters(w), lr=lr, momentum=0.1)"),
    ("tensor_features/train.py", 'if config.batchnorm and config.basis != "mlp":', "if False:"),
    ("tensor_features/train.py", "gap = loss - optimum\n", "gap = abs(loss - optimum)\n"),
]

CPU = torch.device("cpu")


def original_problem(device="cpu", degree=3):
    x, y = load_data(100, 0.1, seed=0, device=device)
    return x, y, model.feature_map(x, degree), model.initial_weights(degree, 0, torch.device(device))


def mse_gradient(phi, w, y):
    return 2 / len(y) * phi.T @ (phi @ w - y)  # ∇ mean((Φw - y)²)


def derivative_gradient(x, w, weight, target):
    """∇ weight·mean((Φ′w − t)²) = weight · 2/n Φ′ᵀ(Φ′w − t), with Φ′ = [1, 2x, 3x²] typed in."""
    phi_prime = torch.cat([torch.ones_like(x), 2 * x, 3 * x**2], dim=1)
    return weight * 2 / len(x) * phi_prime.T @ (phi_prime @ w - target)


def numpy_optimum(x, y, weight=0.0, target=None):
    """Oracle: numpy.linalg.lstsq on [Φ; √weight Φ′] w ≈ [y; √weight t], and its Hessian's eigenvalues."""
    x64, y64 = x.double().cpu().numpy(), y.double().cpu().numpy()
    a = np.hstack([x64, x64**2, x64**3])
    b = y64
    if weight:
        a = np.vstack([a, math.sqrt(weight) * np.hstack([np.ones_like(x64), 2 * x64, 3 * x64**2])])
        b = np.vstack([b, math.sqrt(weight) * target.double().cpu().numpy()])
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    return w, float(((a @ w - b) ** 2).sum() / len(x64)), np.linalg.eigvalsh(2 * a.T @ a / len(x64))


def run_main(capsys, *args):
    """main(argv) in process: (exit code, stdout)."""
    code = train.main(list(args))
    return code, capsys.readouterr().out


def number_after(text, label):
    match = re.search(re.escape(label) + r"\s*(-?[\d.]+(?:e[-+]?\d+)?)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


# -- one epoch --------------------------------------------------------------------------------------

def test_manual_step_is_one_gradient_step_and_resets_grad():
    x, y, phi, w0 = original_problem()
    w = w0.clone().requires_grad_()
    train.manual_step(phi, y, w, lr=0.1)
    assert torch.allclose(w.detach(), w0 - 0.1 * mse_gradient(phi, w0, y), atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0 and w.is_leaf


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_step_is_one_gradient_step_of_both_terms(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w = w0.clone().requires_grad_()
    loss, data = train.derivative_step(model.Loss(name, weight), model.feature_map, x, y, w, lr=0.1)
    expected = w0 - 0.1 * (mse_gradient(phi, w0, y) + derivative_gradient(x, w0, weight, target))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0
    slope = w0[0] + 2 * w0[1] * x + 3 * w0[2] * x**2
    assert data == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), rel=1e-5)
    assert loss == pytest.approx(data + weight * ((slope - target) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_is_bitwise_the_fused_manual_update(device):
    # SGD's step is w.add_(w.grad, alpha=-lr) under no_grad: replay exactly that by hand.
    x, y, phi, w0 = original_problem(device)
    sgd = train.fit(phi, y, w0, lr=0.1, epochs=100, update="sgd")
    w = w0.clone().requires_grad_()
    losses = []
    for _ in range(100):
        loss = ((phi @ w - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            w.add_(w.grad, alpha=-0.1)
            w.grad = None
    assert losses == sgd.losses
    assert torch.equal(w.detach(), sgd.w)


def test_original_manual_update_agrees_with_sgd_to_float32_rounding():
    x, y, phi, w0 = original_problem()
    manual = train.fit(phi, y, w0, lr=0.1, epochs=100, update="manual")
    sgd = train.fit(phi, y, w0, lr=0.1, epochs=100, update="sgd")
    assert manual.losses == pytest.approx(sgd.losses, rel=1e-5)
    assert torch.allclose(manual.w, sgd.w, rtol=1e-5, atol=1e-6)


# -- the fits against the exact answer --------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_converges_to_the_lstsq_optimum(device):
    x, y, phi, w0 = original_problem(device)
    # Oracle: torch.linalg.lstsq (QR-based), independent of the trainer's chunked normal equations.
    phi64, y64 = phi.double().cpu(), y.double().cpu()
    w_star = torch.linalg.lstsq(phi64, y64).solution
    best = ((phi64 @ w_star - y64) ** 2).mean().item()
    result = train.fit(phi, y, w0, lr=1.0, epochs=3000)
    assert result.final_loss == pytest.approx(best, rel=0.01)
    assert torch.allclose(result.w.cpu().double(), w_star, atol=1e-2)


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_losses_train_to_their_stacked_optimum(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w_star, best, eigenvalues = numpy_optimum(x, y, weight, target)
    lr = 2 / (eigenvalues[0] + eigenvalues[-1])  # the best fixed step, from numpy's eigenvalues
    for update in ("manual", "sgd"):
        result = train.fit_loss(model.Loss(name, weight), model.feature_map, x, y, w0, lr, 150, update)
        assert result.final_loss == pytest.approx(best, rel=1e-3)
        assert np.allclose(result.w.numpy(), w_star, atol=1e-3)
        assert len(result.data_losses) == len(result.losses) == 150


def test_a_zero_weight_runs_bit_for_bit_like_the_mse_path():
    x, y, phi, w0 = original_problem()
    for update in ("manual", "sgd"):
        plain = train.fit(phi, y, w0, 0.1, 100, update)
        for name in ("sobolev", "smooth"):
            zero = train.fit_loss(model.Loss(name, 0.0), model.feature_map, x, y, w0, 0.1, 100, update)
            assert zero.losses == plain.losses and torch.equal(zero.w, plain.w)
    # The whole run: --beta 0 and --penalty 0 train exactly as --loss mse does.
    base = TrainConfig(update="both")
    mse_run = train.run(base, CPU)
    for changed in (replace(base, loss="sobolev", beta=0.0), replace(base, loss="smooth", penalty=0.0)):
        zero_run = train.run(changed, CPU)
        assert [f.losses for f in zero_run.fits] == [f.losses for f in mse_run.fits]
        assert zero_run.optimum.loss == mse_run.optimum.loss


def test_lr_auto_converges_faster_than_the_original_lr():
    x, y, phi, w0 = original_problem()
    optimum = model.least_squares_optimum(phi, y)
    eigenvalues = torch.linalg.eigvalsh(2 * phi.double().T @ phi.double() / len(x))
    assert optimum.best_lr == pytest.approx(2 / (eigenvalues[0] + eigenvalues[-1]).item())
    auto = model.epochs_to_within(train.fit(phi, y, w0, optimum.best_lr, 1000).losses, optimum.loss)
    original = model.epochs_to_within(train.fit(phi, y, w0, 0.1, 1000).losses, optimum.loss)
    assert auto is not None and original is not None and auto < original


def test_fast_loss_is_the_original_loss_with_the_same_gradient():
    x, y, phi, w0 = original_problem()
    fast = train.FastLoss(train.rows_layout(phi), y, compile=False)
    w = w0.clone().requires_grad_()
    loss = fast.manual_step(w, lr=0.0)  # lr 0: keep w, look at the loss and the gradient
    phi64, y64, w64 = phi.double(), y.double(), w0.double()
    assert loss == pytest.approx(((phi64 @ w64 - y64) ** 2).mean().item(), rel=1e-6)
    w.grad = None
    train.rows_loss(w, fast.phi_rows, fast.y_flat).backward()
    assert torch.allclose(w.grad.double(), mse_gradient(phi64, w64, y64), atol=1e-6)
    assert train.rows_layout(phi).T.is_contiguous() and torch.equal(train.rows_layout(phi), phi)


def test_fast_fit_follows_the_original_trajectory():
    x, y, phi, w0 = original_problem()
    original = train.fit(phi, y, w0, lr=0.1, epochs=100)
    for update in ("manual", "sgd"):
        fast = train.fit(phi, y, w0, lr=0.1, epochs=100, update=update, fast=train.FastLoss(phi, y, compile=False))
        assert fast.losses == pytest.approx(original.losses, rel=1e-5)
        assert torch.allclose(fast.w, original.w, rtol=1e-5, atol=1e-6)


def test_forgetting_zero_grad_is_worse():
    x, y, phi, w0 = original_problem()
    good = train.fit(phi, y, w0, lr=0.1, epochs=100)
    bad = train.fit(phi, y, w0, lr=0.1, epochs=100, zero_grad=False)
    assert bad.diverged_at is not None or bad.final_loss > 2 * good.final_loss


def test_divergence_is_detected_not_propagated():
    x, y, phi, w0 = original_problem()
    result = train.fit(phi, y, w0, lr=50.0, epochs=500)
    assert result.diverged_at is not None and all(math.isfinite(loss) for loss in result.losses)


# -- the observations ----------------------------------------------------------------------------------

def test_update_outside_no_grad_reports_both_failures():
    x, y, phi, w0 = original_problem()
    observed = train.update_outside_no_grad(phi, y, w0, 0.1)
    assert "a leaf Variable that requires grad is being used in an in-place operation" in observed.in_place_error
    first, second = observed.rebinding
    assert first.loss == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), rel=1e-6)
    assert (first.is_leaf, first.grad_fn) == (False, "SubBackward0")
    assert second.epoch == 1 and second.loss is None  # w.grad is None: w is no longer a leaf


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_create_graph_is_what_lets_the_derivative_term_reach_w(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    check = train.create_graph_check(model.Loss(name, weight), x, y, w0, 3, "monomial")
    data, derivative = mse_gradient(phi, w0, y), derivative_gradient(x, w0, weight, target)
    assert torch.allclose(check.with_graph, data + derivative, atol=1e-5)
    assert torch.allclose(check.data_only, data, atol=1e-6)
    assert torch.allclose(check.by_formula, derivative, atol=1e-5)
    # Without create_graph the derivative term is a constant: its contribution to w.grad is missing.
    assert torch.allclose(check.without_graph, data, atol=1e-6)
    assert (check.without_graph - check.with_graph).abs().max() > 0.1
    assert check.slope_requires_grad == (True, False)
    assert "Trying to backward through the graph a second time" in check.freed_error


def test_both_routes_to_f_prime_at_the_trained_w():
    x, y, phi, w0 = original_problem()
    w = torch.tensor([[0.3], [-1.1], [0.6]])
    routes = train.derivative_routes(model.feature_map, w, x, model.feature_derivative_map(x))
    analytic = w[0] + 2 * w[1] * x + 3 * w[2] * x**2
    for value in (routes.batched, routes.vmapped, routes.formula):
        assert torch.allclose(value, analytic, atol=1e-6)
    assert routes.vmap_gap < 1e-6 and routes.formula_gap < 1e-6


def test_batchnorm_trap_sum_trick_is_the_column_sums_not_the_diagonal():
    x = torch.linspace(-1, 1, 12).unsqueeze(1)
    torch.manual_seed(3)
    extractor = train.MLPFeatures(3, batchnorm=True)
    w = torch.randn(3, 1)
    trap = train.batchnorm_trap(extractor, w, x)
    # Oracle: the batch Jacobian row by row, one autograd.grad per output, in train mode.
    inputs = x.clone().requires_grad_()
    outputs = (extractor(inputs) @ w).flatten()
    rows = torch.stack([torch.autograd.grad(outputs[j], inputs, retain_graph=True)[0].flatten() for j in range(12)])
    assert torch.allclose(trap.diagonal, rows.diagonal(), atol=1e-6)
    assert torch.allclose(trap.sum_trick, rows.sum(0), atol=1e-5)  # Σ_j ∂f_j/∂x_i
    assert torch.allclose(trap.column_sums, rows.sum(0), atol=1e-5)
    assert trap.gap > 1e-2 and trap.gap == pytest.approx((rows.sum(0) - rows.diagonal()).abs().max().item(), abs=1e-5)
    assert trap.eval_gap < 1e-6
    assert "mutate a captured Tensor" in trap.vmap_error
    assert "Expected more than 1 value per channel when training" in trap.vmap_error_replaced


def test_fitted_curve_is_the_fit_and_its_derivative_at_new_x():
    w = torch.tensor([[0.1], [0.9], [0.2]])
    curve = train.fitted_curve(model.feature_map, w)
    x = torch.linspace(-1, 1, 201).unsqueeze(1)
    assert torch.allclose(curve.values, 0.1 * x + 0.9 * x**2 + 0.2 * x**3, atol=1e-6)
    assert torch.allclose(curve.slopes, 0.1 + 1.8 * x + 0.6 * x**2, atol=1e-6)
    assert curve.values.is_inference() and not curve.values.requires_grad


# -- the report: every printed number against the test's own ------------------------------------------

@pytest.mark.parametrize("lr", [0.1, 2.07, 2.5, "auto"])
def test_convergence_lines_say_what_limits_this_lr(lr):
    x, y, phi, w0 = original_problem()
    optimum = model.least_squares_optimum(phi, y)
    _, _, eigenvalues = numpy_optimum(x, y)
    low, high = eigenvalues[0], eigenvalues[-1]
    kappa, best = high / low, 2 / (low + high)
    auto = lr == "auto"
    lr = optimum.best_lr if auto else lr  # what --lr auto passes
    assert optimum.best_lr == pytest.approx(best, rel=1e-6)
    text = "\n".join(train.convergence_lines(optimum, lr))
    assert f"κ = {kappa:.4g}" in text
    rho = max(abs(1 - lr * low), abs(1 - lr * high))
    if lr >= 2 / high:
        assert f"grows by |1 − lr·λmax| = {rho:.4g}" in text and "floor" not in text
        return
    if auto or lr < best:
        assert rho == pytest.approx(1 - lr * low)
        assert f"1 − lr·λmin = {rho:.4f}" in text and f"{(2 / high) / lr:.3g}× below" in text
    else:
        assert f"|1 − lr·λmax| = {rho:.4f}" in text and "overshoots" in text
    assert f"(κ−1)/(κ+1) = {(kappa - 1) / (kappa + 1):.4f}" in text
    assert ("this is the best fixed step" in text) == auto


def test_default_run_prints_the_original_comparison_and_a_true_verdict(capsys, monkeypatch, tmp_path):
    summary = tmp_path / "summary.jsonl"
    monkeypatch.setenv("LAB_SUMMARY", str(summary))
    code, out = run_main(capsys)
    assert code == 0
    x, y, phi, w0 = original_problem()
    w_star, best, eigenvalues = numpy_optimum(x, y)
    assert number_after(out, "least squares (normal equations ΦᵀΦ w = Φᵀy in float64): loss") == pytest.approx(
        best, abs=1e-6)
    assert re.search(r"Epoch 0, Loss \d\.\d{4} +\|   Epoch 0, Loss \d\.\d{4}", out)
    manual = train.fit(phi, y, w0, 0.1, 100)
    assert number_after(out, "manual: final loss") == pytest.approx(manual.final_loss, abs=1e-6)
    assert f"{manual.final_loss - best:.6f} above the optimum" in out
    assert "not within 1% of it in 100 epochs" in out
    assert f"is {(2 / eigenvalues[-1]) / 0.1:.3g}× below the stability limit" in out
    fit_at_half = float(torch.tensor([0.5, 0.25, 0.125]) @ manual.w)  # Φ(0.5)·w
    assert f"fit at x=0.5: {fit_at_half:.4f}" in out
    (line,) = summary.read_text().splitlines()
    verdict = json.loads(line)["verdict"]
    above = 100 * (manual.final_loss - best) / best
    assert verdict.startswith("mse loss, 100 epochs at lr 0.1: manual ")
    assert f"manual {manual.final_loss:.6f} ({above:+.1f}%, not within 1%)" in verdict
    assert f"exact optimum {best:.6f}" in verdict and "sgd " in verdict


@pytest.mark.parametrize("name, flag, weight", [("sobolev", "--beta", 1.0), ("smooth", "--penalty", 0.1)])
def test_derivative_loss_runs_report_trained_loss_optimum_and_condition_number(name, flag, weight, capsys):
    code, out = run_main(capsys, "--loss", name, "--update", "manual")
    assert code == 0
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w_star, best, eigenvalues = numpy_optimum(x, y, weight, target)
    _, mse_best, mse_eigenvalues = numpy_optimum(x, y)
    assert number_after(out, "normal equations in float64): loss") == pytest.approx(best, abs=1e-6)
    assert f"w* = [{', '.join(f'{v:.4f}' for v in w_star.flatten())}]" in out
    assert f"Hessian condition number {eigenvalues[-1] / eigenvalues[0]:.4g}" in out
    assert f"κ {mse_eigenvalues[-1] / mse_eigenvalues[0]:.4g} → {eigenvalues[-1] / eigenvalues[0]:.4g}" in out
    trained = train.fit_loss(model.Loss(name, weight), model.feature_map, x, y, w0, 0.1, 100)
    assert number_after(out, "manual: final loss") == pytest.approx(trained.final_loss, abs=1e-6)
    within = model.epochs_to_within(trained.losses, best)
    assert f"within 1% of it from epoch {within}" in out
    assert number_after(out, "the mse optimum on the same data: loss") == pytest.approx(mse_best, abs=1e-6)
    assert "f′ at the 100 training x, two ways" in out and "per epoch:" in out
    slope_half = float(w_star[0, 0] + w_star[1, 0] + 0.75 * w_star[2, 0])  # Φ′(0.5)·w* = w₁ + w₂ + ¾w₃
    assert number_after(out, "f′(0.5) =") == pytest.approx(slope_half, abs=0.02)


def test_mlp_run_times_its_epochs_and_reports_no_gap(capsys):
    code, out = run_main(capsys, "--basis", "mlp", "--update", "manual", "--epochs", "20")
    assert code == 0
    mlp_time = re.search(r"mlp: 20 epochs in ([\d.]+) s: the first [\d.]+ s, then ([\d.]+) ms/epoch", out)
    assert mlp_time and float(mlp_time.group(2)) > 0
    assert re.search(r"mlp: final loss \d\.\d{6}; a learned extractor has no closed-form optimum", out)
    assert "compare its final loss, not its gap" not in out


def test_batchnorm_switch_prints_the_trap(capsys):
    code, out = run_main(capsys, "--basis", "mlp", "--batchnorm", "--loss", "smooth", "--update", "manual",
                         "--epochs", "5", "--n", "24")
    assert code == 0
    gap = number_after(out, "max |sum trick − diagonal| =")
    assert gap > 1e-3 and number_after(out, "column sums of that Jacobian| =") < 1e-5
    assert number_after(out, "samples independent): max |sum trick − diagonal| =") < 1e-5
    assert "mutate a captured Tensor" in out


def test_switches_and_plots_write_only_into_the_plot_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out = run_main(capsys, "--sweep", "--basis", "legendre", "--lr", "auto", "--update", "manual",
                         "--plot", "plots")
    assert code == 0 and "max |cos| of two Φ columns" in out
    code, out = run_main(capsys, "--loss", "sobolev", "--update", "manual", "--epochs", "30", "--plot", "more/plots")
    assert code == 0
    from PIL import Image

    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["degree_sweep.png", "fit.png", "loss_curves.png"]
    assert sorted(p.name for p in (tmp_path / "more/plots").iterdir()) == ["derivative.png", "fit.png",
                                                                           "loss_curves.png"]
    for path in [*(tmp_path / "plots").iterdir(), *(tmp_path / "more/plots").iterdir()]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["more", "plots"]  # nothing written elsewhere


def test_sweep_rows_match_their_own_problems():
    x, y, _, _ = original_problem()
    rows = train.degree_sweep(TrainConfig(), x, y, model.Loss(), degrees=[1, 3])
    for row in rows:
        phi = model.feature_map(x, row.degree).double().numpy()
        eigenvalues = np.linalg.eigvalsh(phi.T @ phi)
        assert row.condition_number == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-6)
        normalised = phi / np.linalg.norm(phi, axis=0)
        cosines = np.abs(normalised.T @ normalised) - np.eye(row.degree)
        assert row.max_cosine == pytest.approx(max(cosines.max(), 0.0), abs=1e-9)


def test_no_zero_grad_and_outside_no_grad_switches(capsys):
    code, out = run_main(capsys, "--no-zero-grad", "--update", "manual")
    assert code == 0 and "without w.grad.zero_(): gradients accumulate" in out and "convergence at" not in out
    code, out = run_main(capsys, "--outside-no-grad")
    assert code == 0 and "in place:  w -= lr * w.grad raises RuntimeError" in out and "w.grad is None" in out


def test_fast_switch_compiles_and_reaches_the_same_loss(capsys):
    code, out = run_main(capsys, "--update", "manual", "--fast", "--epochs", "20")
    assert code == 0 and "torch.compile compiling" in out
    x, y, phi, w0 = original_problem()
    assert number_after(out, "manual --fast: final loss") == pytest.approx(
        train.fit(phi, y, w0, 0.1, 20).final_loss, abs=2e-6)


# -- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["--epochs", "-1"], "--epochs"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--degree", "0"], "--degree"), (["--n", "1"], "--n"), (["--update", "adam"], "--update"),
    (["--n", "3", "--degree", "5"], "--degree"), (["--loss", "huber"], "--loss"),
    (["--beta", "-1"], "--beta"), (["--beta", "nan"], "--beta"), (["--beta", "inf"], "--beta"),
    (["--beta", "1e300"], "--beta"), (["--penalty", "-0.5"], "--penalty"), (["--penalty", "inf"], "--penalty"),
    (["--noise", "1e300"], "--noise"), (["--noise", "-1"], "--noise"), (["--seed", "-1"], "--seed"),
    (["--seed", str(2**70)], "--seed"), (["--batchnorm"], "--batchnorm"),
    (["--basis", "mlp", "--batchnorm", "--n", "5000"], "--batchnorm"), (["--fast", "--loss", "sobolev"], "--fast"),
    (["--outside-no-grad", "--loss", "smooth"], "--outside-no-grad"), (["--fast", "--basis", "mlp"], "--fast"),
])
def test_bad_input_is_one_line_and_exit_2(args, named, capsys):
    assert named in usage_error(train.main, args, capsys)


def test_maths_that_breaks_after_parsing_is_a_usage_error(capsys, monkeypatch):
    x = torch.zeros(10, 1)  # every point the same: ΦᵀΦ is singular
    with pytest.raises(train.UsageError, match="--degree 3"):
        train.exact_problem(x, torch.zeros(10, 1), 3, "monomial", model.Loss())
    monkeypatch.setattr(train, "load_data", lambda *args: (x, torch.zeros(10, 1)))
    assert "--degree" in usage_error(train.main, ["--n", "10"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_usage_error(capsys):
    assert "no CUDA device" in usage_error(train.main, ["--device", "cuda"], capsys)


def test_bad_input_from_the_terminal_has_no_traceback():
    assert "--beta" in terminal_usage_error("-m", "tensor_features.train", "--loss", "sobolev", "--beta", "nan")


def test_help_names_every_switch_with_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for flag, default in (("--loss", "mse"), ("--beta", "1.0"), ("--penalty", "0.1"), ("--lr", "0.1"),
                          ("--epochs", "100"), ("--n", "100")):
        assert re.search(re.escape(flag) + r"\b[^\n]*\n(?:[^\n]*\n)*?[^\n]*\(default: " + re.escape(default) + r"\)",
                         out), flag
    for flag in ("--batchnorm", "--fast", "--sweep", "--plot", "--outside-no-grad", "--no-zero-grad"):
        assert flag in out


# -- bench row 10 -----------------------------------------------------------------------------------------

def test_bench_row_10_runs_small():
    from bench.rows import double_backward

    rows = double_backward.measure(CPU, argparse.Namespace(n=64, repeats=1))
    assert [row.key for row in rows] == ["10a", "10b", "10c"] and double_backward.NUMBER == 10
    for row in rows:
        assert row.cpu.value > 0 and row.cpu.reference > 0
        assert row.cpu.ratio == pytest.approx(row.cpu.value / row.cpu.reference)
    assert rows[0].cpu.value == rows[2].cpu.value  # the same sobolev epoch, against two references
