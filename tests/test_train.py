"""The trainer: gradients against 2/n Φᵀ(Φw - y) and gradcheck, convergence against lstsq,
the observation switches, bad input, plots and the default run."""

import re

import pytest
import torch

from conftest import DEVICES, ROOT, run_script, terminal_usage_error, usage_error
from tensor_features import train
from tensor_features.load_data import load_data
from tensor_features.utils import feature_map, legendre_feature_map


def seed_problem(device="cpu", degree=3):
    x, y = load_data(100, 0.1, seed=0, device=device)
    return x, y, feature_map(x, degree), train.initial_weights(degree, 0, torch.device(device))


def test_feature_map_is_the_seed_formula():
    x = torch.linspace(-1, 1, 7).unsqueeze(1)
    assert torch.equal(feature_map(x), torch.cat([x, x**2, x**3], dim=1))


def test_legendre_features_span_the_monomials():
    x = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1)
    # Oracle: P1 = x, P2 - P2(0) = 3x²/2, P3 = (5x³ - 3x)/2, written out from the textbook formulas.
    expected = torch.cat([x, 1.5 * x**2, (5 * x**3 - 3 * x) / 2], dim=1)
    assert torch.allclose(legendre_feature_map(x, 3), expected)


def test_load_data_is_deterministic_under_a_seed():
    assert all(torch.equal(a, b) for a, b in zip(load_data(seed=3), load_data(seed=3)))
    assert not torch.equal(load_data(seed=3)[1], load_data(seed=4)[1])


def test_loss_gradient_matches_the_analytic_formula_and_gradcheck():
    x, y, phi, w0 = seed_problem()
    w = w0.clone().requires_grad_()
    train.mse(phi, w, y).backward()
    analytic = 2 / len(x) * phi.T @ (phi @ w0 - y)  # ∇ mean((Φw - y)²)
    assert torch.allclose(w.grad, analytic, atol=1e-6)
    w64 = w0.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: train.mse(phi.double(), v, y.double()), (w64,))


def test_manual_step_is_one_gradient_step_and_resets_grad():
    x, y, phi, w0 = seed_problem()
    w = w0.clone().requires_grad_()
    train.manual_step(phi, y, w, lr=0.1)
    expected = w0 - 0.1 * (2 / len(x) * phi.T @ (phi @ w0 - y))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0 and w.is_leaf


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_is_bitwise_the_fused_manual_update(device):
    # SGD's step is w.add_(w.grad, alpha=-lr) under no_grad: replay exactly that by hand.
    x, y, phi, w0 = seed_problem(device)
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


def test_seed_manual_update_agrees_with_sgd_to_float32_rounding():
    x, y, phi, w0 = seed_problem()
    manual = train.fit(phi, y, w0, lr=0.1, epochs=100, update="manual")
    sgd = train.fit(phi, y, w0, lr=0.1, epochs=100, update="sgd")
    assert manual.losses == pytest.approx(sgd.losses, rel=1e-5)
    assert torch.allclose(manual.w, sgd.w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_converges_to_the_lstsq_optimum(device):
    x, y, phi, w0 = seed_problem(device)
    # Oracle: torch.linalg.lstsq (QR-based), independent of the trainer's chunked normal equations.
    phi64, y64 = phi.double().cpu(), y.double().cpu()
    w_star = torch.linalg.lstsq(phi64, y64).solution
    best = ((phi64 @ w_star - y64) ** 2).mean().item()
    for rows_per_chunk in (7, 2**16):  # several chunks, and one
        optimum = train.least_squares_optimum(phi, y, rows_per_chunk)
        assert optimum.loss == pytest.approx(best, rel=1e-9)
        assert torch.allclose(optimum.w, w_star, atol=1e-9)
    result = train.fit(phi, y, w0, lr=1.0, epochs=3000)
    assert result.final_loss == pytest.approx(best, rel=0.01)
    assert torch.allclose(result.w.cpu().double(), w_star, atol=1e-2)


def test_lr_auto_converges_faster_than_the_seed_lr():
    x, y, phi, w0 = seed_problem()
    optimum = train.least_squares_optimum(phi, y)
    hessian = 2 * phi.double().T @ phi.double() / len(x)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert optimum.best_lr == pytest.approx(2 / (eigenvalues[0] + eigenvalues[-1]).item())
    auto = train.epochs_to_within(train.fit(phi, y, w0, optimum.best_lr, 1000).losses, optimum.loss)
    seed = train.epochs_to_within(train.fit(phi, y, w0, 0.1, 1000).losses, optimum.loss)
    assert auto is not None and seed is not None and auto < seed


def test_fast_loss_is_the_seed_loss_with_the_same_gradient():
    x, y, phi, w0 = seed_problem()
    fast = train.FastLoss(train.rows_layout(phi), y, compile=False)
    w = w0.clone().requires_grad_()
    loss = fast.manual_step(w, lr=0.0)  # lr 0: keep w, look at the loss and the gradient
    phi64, y64, w64 = phi.double(), y.double(), w0.double()
    assert loss == pytest.approx(((phi64 @ w64 - y64) ** 2).mean().item(), rel=1e-6)
    w.grad = None
    train.rows_loss(w, fast.phi_rows, fast.y_flat).backward()
    assert torch.allclose(w.grad.double(), 2 / len(x) * phi64.T @ (phi64 @ w64 - y64), atol=1e-6)
    assert train.rows_layout(phi).T.is_contiguous() and torch.equal(train.rows_layout(phi), phi)


def test_fast_fit_follows_the_seed_trajectory():
    x, y, phi, w0 = seed_problem()
    seed = train.fit(phi, y, w0, lr=0.1, epochs=100)
    for update in ("manual", "sgd"):
        fast = train.fit(phi, y, w0, lr=0.1, epochs=100, update=update,
                         fast=train.FastLoss(phi, y, compile=False))
        assert fast.losses == pytest.approx(seed.losses, rel=1e-5)
        assert torch.allclose(fast.w, seed.w, rtol=1e-5, atol=1e-6)


def test_fast_switch_compiles_and_reaches_the_same_loss():
    default = run_script("-m", "tensor_features.train", "--update", "manual")
    fast = run_script("-m", "tensor_features.train", "--update", "manual", "--fast")
    assert fast.returncode == 0, fast.stderr
    assert "torch.compile compiling" in fast.stdout and fast.stderr == ""
    final = [re.search(r"final loss (\d\.\d+)", r.stdout).group(1) for r in (default, fast)]
    assert float(final[1]) == pytest.approx(float(final[0]), abs=2e-6)


def test_forgetting_zero_grad_is_worse():
    x, y, phi, w0 = seed_problem()
    good = train.fit(phi, y, w0, lr=0.1, epochs=100)
    bad = train.fit(phi, y, w0, lr=0.1, epochs=100, zero_grad=False)
    assert bad.diverged_at is not None or bad.final_loss > 2 * good.final_loss


def test_divergence_is_detected_not_propagated():
    x, y, phi, w0 = seed_problem()
    result = train.fit(phi, y, w0, lr=50.0, epochs=500)
    assert result.diverged_at is not None and all(l == l and l != float("inf") for l in result.losses)


def test_update_outside_no_grad_reports_both_failures():
    x, y, phi, w0 = seed_problem()
    report = "\n".join(train.update_outside_no_grad(phi, y, w0, 0.1))
    assert "a leaf Variable that requires grad is being used in an in-place operation" in report
    assert "w.grad is None" in report


def test_predict_runs_under_inference_mode():
    x, y, phi, w0 = seed_problem()
    prediction = train.predict(feature_map, w0, x)
    assert prediction.is_inference() and not prediction.requires_grad
    assert torch.allclose(prediction, phi @ w0)


def test_default_run_prints_both_updates_and_the_optimum():
    result = run_script("-m", "tensor_features.train")
    assert result.returncode == 0, result.stderr
    assert re.search(r"Epoch 0, Loss \d\.\d{4} +\|   Epoch 0, Loss \d\.\d{4}", result.stdout)
    assert "manual: final loss" in result.stdout and "sgd: final loss" in result.stdout
    assert "least squares (normal equations" in result.stdout


@pytest.mark.parametrize("args, named", [
    (["--epochs", "-1"], "--epochs"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--degree", "0"], "--degree"), (["--n", "1"], "--n"), (["--update", "adam"], "--update"),
    (["--n", "3", "--degree", "5"], "--degree"),
])
def test_bad_input_is_one_line_and_exit_2(args, named, capsys):
    # In process: argparse's exit is the same; the terminal test below shows no traceback escapes.
    assert named in usage_error(train.main, args, capsys)


def test_bad_input_from_the_terminal_has_no_traceback():
    assert "--epochs" in terminal_usage_error("-m", "tensor_features.train", "--epochs", "-1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_usage_error():
    result = run_script("-m", "tensor_features.train", "--device", "cuda")
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_switches_run_from_the_terminal(tmp_path):
    result = run_script("-m", "tensor_features.train", "--sweep", "--basis", "legendre", "--lr", "auto",
                        "--plot", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["degree_sweep.png", "fit.png", "loss_curves.png"]
    for name in written:
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]  # nothing written elsewhere
    for switch in ("--no-zero-grad", "--outside-no-grad"):
        assert run_script("-m", "tensor_features.train", switch).returncode == 0
    mlp = run_script("-m", "tensor_features.train", "--basis", "mlp", "--update", "manual")
    assert mlp.returncode == 0 and "mlp: final loss" in mlp.stdout
