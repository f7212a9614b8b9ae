"""The trainer's command line and report (tensor_features/train.py): every number the report prints
against the test's own computation (numpy's least squares and eigenvalues, trajectories replayed
here), the verdict, the switches and plots, bad input, and bench row 10. Runs in process; one
terminal run."""

import argparse
import io
import math
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support import CUDA, ROOT, terminal_usage_error, usage_error
from tensor_features import train
from tensor_features.trainer import experiment, fitting, model, problem, report
from tensor_features.config import TrainConfig
from tensor_features.load_data import load_data
from tests.trainer.oracles import descent_losses, numpy_optimum, original_problem, stacked_system

MUTANTS = [
    ("tensor_features/trainer/report.py", "best_rho = (kappa - 1) / (kappa + 1)", "best_rho = (kappa - 1) / kappa"),
    ("tensor_features/trainer/report.py", "{optimum.max_stable_lr / lr:.3g}× below", "{lr / optimum.max_stable_lr:.3g}× below"),
    ("tensor_features/trainer/report.py", 'above = f"{100 * gap / result.optimum.loss:+.1f}%"',
     'above = f"{100 * gap / fit_result.final_loss:+.1f}%"'),
    ("tensor_features/trainer/problem.py", 'if nonzero >= degree:', 'if nonzero >= degree - 1:'),
    ("tensor_features/trainer/report.py", "(epoch {len(result.losses) - 1}, before its update)",
     "(epoch {len(result.losses)}, before its update)"),
    ("tensor_features/trainer/report.py", 'if manual.diverged_at is not None or sgd.diverged_at is not None:', 'if False:'),
    ("tensor_features/trainer/report.py", "at_half = int(torch.argmin((curve.x - 0.5).abs()))",
     "at_half = int(torch.argmin((curve.x - 0.25).abs()))"),
    ("tensor_features/trainer/problem.py", "rows = DerivativeRows(make_feature_derivatives(x, degree, basis)",
     "rows = DerivativeRows(make_features(x, degree, basis)"),
    # the registry: sobolev weighted by --penalty, smooth by --beta
    ("tensor_features/trainer/losses.py",
     'weight_flag="beta", weight_words="the derivative term"),\n    LossKind("smooth", "+ λ·mean(f′²), a slope penalty",\n             target=no_slope, term="mean(f′²)", symbol="λ",\n             weight_flag="penalty",',
     'weight_flag="penalty", weight_words="the derivative term"),\n    LossKind("smooth", "+ λ·mean(f′²), a slope penalty",\n             target=no_slope, term="mean(f′²)", symbol="λ",\n             weight_flag="beta",'),
    ("tensor_features/train.py", 'if config.batchnorm and config.basis != "mlp":', "if False:"),
    ("tensor_features/trainer/report.py", "gap = loss - optimum\n", "gap = abs(loss - optimum)\n"),
    ("tensor_features/trainer/report.py", "if limiting == low:", "if limiting == high:"),
    ("tensor_features/trainer/experiment.py", 'result.mse_fit = fit(result.mse_problem.phi, y, w0, replace(plans[0], update="manual"))',
     'result.mse_fit = fit(result.mse_problem.phi, y, w0, replace(plans[0], update="manual", lr=2 * lr))'),
    ("tensor_features/config.py", 'beta: float = option(1.0,', 'beta: float = option(0.5,'),
    ("tensor_features/trainer/report.py", "steps = lr * optimum.hessian_eigenvalues", "steps = optimum.hessian_eigenvalues"),
    ("tensor_features/config.py", "type=float_in_range(0.0, 1e6))\n    degree", "type=float)\n    degree"),
    # --fast: the log interval, the pay-off, the setup text; the closed pipe
    ("tensor_features/trainer/experiment.py", "log_every=config.log_every)", "log_every=1)"),
    ("tensor_features/trainer/report.py", "payoff_epochs(fitted.setup_seconds, fitted.setup_epochs, fitted.epoch_ms, reference_ms)",
     "payoff_epochs(fitted.setup_seconds, fitted.setup_epochs, reference_ms, fitted.epoch_ms)"),
    ("tensor_features/trainer/report.py", 'f"{result.log_every} epochs")', 'f"{result.setup_epochs} epochs")'),
    ("tensor_features/train.py", "    sys.exit(run_main(main))", "    sys.exit(main())"),
    ("tensor_features/trainer/fast.py", "        self.needs_compiling = False\n        return loss.detach()\n\n    def sgd_epoch",
     "        pass\n        return loss.detach()\n\n    def sgd_epoch"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # fit_mlp: the optimizer gets only w: the extractor is never trained
    ('tensor_features/trainer/fitting.py', 'parameters=lambda w: [w, *extractor.parameters()]', 'parameters=lambda w: [w]'),
    # ---------------------------------------------------------------- train.py
    # resolve_lr: --lr auto picks the stability limit 2/λmax instead of 2/(λmax+λmin)
    ('tensor_features/trainer/experiment.py', 'return optimum.best_lr if lr == "auto" else float(lr)', 'return optimum.max_stable_lr if lr == "auto" else float(lr)'),
    # loss_of: beta and penalty swapped between sobolev and smooth
    ('tensor_features/trainer/losses.py', 'weight_flag="beta", weight_words="the derivative term"),\n    LossKind("smooth", "+ λ·mean(f′²), a slope penalty",\n             target=no_slope, term="mean(f′²)", symbol="λ",\n             weight_flag="penalty",', 'weight_flag="penalty", weight_words="the derivative term"),\n    LossKind("smooth", "+ λ·mean(f′²), a slope penalty",\n             target=no_slope, term="mean(f′²)", symbol="λ",\n             weight_flag="beta",'),
    # rank_shortfall: counts all points, not the nonzero ones (x = 0 counted as usable)
    ('tensor_features/trainer/problem.py', 'nonzero = int((x != 0).sum())', 'nonzero = int(x.numel())'),
    # within_epoch: the float32 floor dropped (with --noise 0 nothing is ever "within")
    ('tensor_features/trainer/experiment.py', 'return epochs_to_within(losses, optimum.loss, floor=optimum.resolution)', 'return epochs_to_within(losses, optimum.loss)'),
    # ---------------------------------------------------------------- config.py / utils.py / load_data.py
    # config: the learning-rate default is not the original's 0.1
    ('tensor_features/config.py', 'lr: float | str = option(0.1, "learning rate', 'lr: float | str = option(0.01, "learning rate'),
    # build_parser: bool detection misses the string annotation: --no-zero-grad etc. want a value
    ('tensor_features/config.py', 'if spec.type in ("bool", bool):', 'if spec.type is bool:'),
    # load_data: x on [0, 1] instead of [-1, 1]
    ('tensor_features/load_data.py', 'x = torch.linspace(-1, 1, n, dtype=dtype, device="cpu").unsqueeze(1)', 'x = torch.linspace(0, 1, n, dtype=dtype, device="cpu").unsqueeze(1)'),
    # load_data: noise scaling applied after adding x²: y = noise · (N(0,1) + x²)
    ('tensor_features/load_data.py', '.mul_(noise).add_(x**2)', '.add_(x**2).mul_(noise)'),
    # ---------------------------------------------------------------- the trainer's new rooms (blind)
    # losses.py: smooth reads its weight from --beta: `--loss smooth` trains with λ = 1 (the --beta default) not 0.1, and `--loss smooth --penalty 0.5` is refused as a flag for sobolev
    ('tensor_features/trainer/losses.py', 'weight_flag="penalty"', 'weight_flag="beta"'),
    # experiment.py: the sweep builds its own FitPlan and drops --no-zero-grad: `--sweep --no-zero-grad` sweeps with w.grad zeroed, its last losses equal to a plain sweep's
    ('tensor_features/trainer/experiment.py', '        plan = plan_of(config, resolve_lr(config.lr, problem.optimum))  # --no-zero-grad included\n', '        plan = FitPlan(resolve_lr(config.lr, problem.optimum), config.epochs)\n'),
    # experiment.py: --update both runs sgd first: fits[0] is sgd, so the report's columns are swapped (sgd | manual) and the curve/verdict come from the sgd fit
    ('tensor_features/trainer/experiment.py', '["manual", "sgd"] if config.update == "both"', '["sgd", "manual"] if config.update == "both"'),
]

CPU = torch.device("cpu")


def run_main(capsys, *args):
    """main(argv) in process: (exit code, stdout)."""
    code = train.main(list(args))
    return code, capsys.readouterr().out


def number_after(text, label):
    match = re.search(re.escape(label) + r"\s*(-?[\d.]+(?:e[-+]?\d+)?)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


def test_a_zero_weight_runs_exactly_like_the_mse_run():
    # The whole run: --beta 0 and --penalty 0 train exactly as --loss mse does.
    base = TrainConfig(update="both")
    mse_run = train.run(base, CPU)
    for changed in (replace(base, loss="sobolev", beta=0.0), replace(base, loss="smooth", penalty=0.0)):
        zero_run = train.run(changed, CPU)
        assert [f.losses for f in zero_run.fits] == [f.losses for f in mse_run.fits]
        assert zero_run.optimum.loss == mse_run.optimum.loss


def test_gap_text_keeps_the_sign():
    assert report.gap_text(0.0125, 0.0100) == "0.002500 above the optimum"
    assert report.gap_text(0.01000043, 0.0100) == "4.3e-07 above the optimum"
    below = report.gap_text(0.0099, 0.0100)
    assert below.startswith("0.0001 below the float64 optimum") and "above" not in below


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
    text = "\n".join(report.convergence_lines(optimum, lr))
    assert f"κ = {kappa:.4g}" in text
    rho = max(abs(1 - lr * low), abs(1 - lr * high))
    if lr >= 2 / high:
        assert f"grows by |1 − lr·λmax| = {rho:.4g}" in text and "floor" not in text
        return
    floor = f"(κ−1)/(κ+1) = {(kappa - 1) / (kappa + 1):.4f}"
    if auto:  # both ends of the spectrum limit equally at the best step
        assert rho == pytest.approx(1 - lr * low) and rho == pytest.approx(lr * high - 1)
        assert f"both shrink by |1 − lr·λ| = {rho:.4f} per epoch, = {floor}" in text
        return
    if lr < best:
        assert rho == pytest.approx(1 - lr * low)
        assert f"1 − lr·λmin = {rho:.4f}" in text and f"{(2 / high) / lr:.3g}× below" in text
    else:
        assert rho == pytest.approx(lr * high - 1)
        assert f"|1 − lr·λmax| = {rho:.4f}" in text and "overshoots" in text
    assert f"would give ρ = {floor}" in text and "both shrink" not in text


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
    losses, w_final = descent_losses(x, y, w0, 0.1, 100)  # the original loop, in float64 by hand
    final, gap = map(float, re.search(r"manual: last loss ([\d.]+) \(epoch 99, before its update\), ([\d.]+) above "
                                      r"the optimum", out).groups())
    assert final == pytest.approx(losses[-1], abs=1e-6) and gap == pytest.approx(losses[-1] - best, abs=2e-6)
    assert "not within 1% of it in 100 epochs" in out
    assert f"is {(2 / eigenvalues[-1]) / 0.1:.3g}× below the stability limit" in out
    fit_at_half = float(np.array([0.5, 0.25, 0.125]) @ w_final[:, 0])  # Φ(0.5)·w
    assert number_after(out, "fit at x=0.5:") == pytest.approx(fit_at_half, abs=2e-4)
    (line,) = summary.read_text().splitlines()
    verdict = json.loads(line)["verdict"]
    above = 100 * (losses[-1] - best) / best
    assert verdict.startswith("mse loss, lr 0.1, --epochs 100, last losses: manual ")
    verdict_loss = number_after(verdict, "manual")
    assert verdict_loss == pytest.approx(losses[-1], abs=1e-6)
    assert f"manual {verdict_loss:.6f} ({above:+.1f}%, not within 1%)" in verdict
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
    losses, _ = descent_losses(x, y, w0, 0.1, 100, weight, target)
    assert number_after(out, "manual: last loss") == pytest.approx(losses[-1], abs=1e-6)
    within = next(epoch for epoch, value in enumerate(losses) if value <= 1.01 * best)
    assert f"within 1% of it from epoch {within}" in out
    comparison = out[out.index("the original mse loop on the same data"):]
    mse_losses, _ = descent_losses(x, y, w0, 0.1, 100)
    assert number_after(comparison, "manual: last loss") == pytest.approx(mse_losses[-1], abs=1e-6)
    assert number_after(out, "the mse optimum on the same data: loss") == pytest.approx(mse_best, abs=1e-6)
    assert "f′ at the 100 training x, two ways" in out and "per epoch:" in out
    slope_half = float(w_star[0, 0] + w_star[1, 0] + 0.75 * w_star[2, 0])  # Φ′(0.5)·w* = w₁ + w₂ + ¾w₃
    assert number_after(out, "f′(0.5) =") == pytest.approx(slope_half, abs=0.02)


def test_mlp_run_times_its_epochs_and_reports_no_gap(capsys):
    code, out = run_main(capsys, "--basis", "mlp", "--update", "manual", "--epochs", "20")
    assert code == 0
    mlp_time = re.search(r"mlp: 20 epochs in ([\d.]+) s: the first [\d.]+ s, then ([\d.]+) ms/epoch", out)
    assert mlp_time and float(mlp_time.group(2)) > 0
    assert re.search(r"mlp: last loss \d\.\d{6} \(epoch 19, before its update\); a learned extractor has no "
                     r"closed-form optimum", out)
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


def test_a_plot_folder_that_cannot_take_the_plots_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)  # no writing into it (root ignores modes: then the next case decides)
    if not os.access(tmp_path / "locked", os.W_OK):
        assert "cannot write into the folder" in usage_error(train.main, ["--epochs", "2", "--plot", "locked"], capsys)
    (tmp_path / "taken" / "loss_curves.png").mkdir(parents=True)  # a folder where a plot's file should go
    stderr = usage_error(train.main, ["--epochs", "2", "--update", "manual", "--plot", "taken"], capsys)
    assert "--plot taken: cannot write" in stderr and "loss_curves.png" in stderr


def test_no_zero_grad_and_outside_no_grad_switches(capsys):
    code, out = run_main(capsys, "--no-zero-grad", "--update", "manual", "--epochs", "200")
    assert code == 0 and "without w.grad.zero_(): gradients accumulate" in out and "convergence at" not in out
    x, y, phi, w0 = original_problem()
    a, b = stacked_system(x, y)
    eigenvalues = np.linalg.eigvalsh(2 * a.T @ a / len(x))
    assert f"lr·λ runs from {0.1 * eigenvalues[0]:.4g} to {0.1 * eigenvalues[-1]:.4g}" in out
    # Oracle: the summed gradient by hand, in float64: w -= lr * (g_0 + ... + g_k).
    w, summed, losses = w0.double().numpy(), 0, []
    for _ in range(200):
        residual = a @ w - b
        losses.append(float((residual**2).mean()))
        summed = summed + 2 / len(x) * a.T @ residual
        w = w - 0.1 * summed
    low, high = map(float, re.search(r"last 100 epochs between ([\d.]+) and ([\d.]+)", out).groups())
    assert low == pytest.approx(min(losses[100:]), abs=2e-6) and high == pytest.approx(max(losses[100:]), abs=2e-6)
    code, out = run_main(capsys, "--outside-no-grad")
    assert code == 0 and "in place:  w -= lr * w.grad raises RuntimeError" in out and "w.grad is None" in out


def test_fast_switch_compiles_and_reaches_the_same_loss(capsys):
    code, out = run_main(capsys, "--update", "manual", "--fast", "--epochs", "20", "--log-every", "5")
    assert code == 0 and "torch.compile compiling" in out
    x, y, phi, w0 = original_problem()
    losses, _ = descent_losses(x, y, w0, 0.1, 20)  # the original loop, in float64 by hand
    assert number_after(out, "manual --fast: last loss") == pytest.approx(losses[-1], abs=2e-6)
    for epoch in (0, 5, 10, 15):  # the log lines, from losses that reached the host 5 at a time
        assert number_after(out, f"Epoch {epoch}, Loss") == pytest.approx(losses[epoch], abs=1e-4)
    timing = re.search(r"manual --fast: 20 epochs in [\d.]+ s: setup ([\d.]+) s \(1 epoch, torch.compile compiling "
                       r"in the first\), then ([\d.]+) ms/epoch; the losses copied to the host every 5 epochs", out)
    assert timing, out
    payoff = re.search(r"--fast (?:never )?pays for its setup \(([\d.]+) s\)(?: from (\d+) epochs on)?.*manual --fast "
                       r"at ([\d.]+) ms/epoch, the original loop at ([\d.]+) \(5 epochs", out)
    assert payoff and payoff.group(1) == timing.group(1) and payoff.group(3) == timing.group(2), out
    setup_ms, fast_ms, default_ms = float(payoff.group(1)) * 1e3, float(payoff.group(3)), float(payoff.group(4))
    if payoff.group(2) is None:
        assert fast_ms >= default_ms - 1e-3  # printed to 3 decimals
    else:
        # The printed figures are rounded (seconds and ms to 3 decimals: ±0.5 ms and ±0.0005 ms), so
        # the count they give is known only between its extremes over those roundings; when the two
        # epochs differ by little (0.014 ms), that range is wide, and a tight bound would be flaky.
        count, gap = int(payoff.group(2)), default_ms - fast_ms
        if gap - 1e-3 > 0:
            lowest = (setup_ms - 0.5 - fast_ms - 5e-4) / (gap + 1e-3)
            highest = (setup_ms + 0.5 - fast_ms + 5e-4) / (gap - 1e-3)
            assert lowest - 1 <= count <= highest + 1, (lowest, count, highest)


def test_payoff_line_by_hand():
    # 2 s of setup for its first epoch, then 10 epochs of 0.5 ms: 0.5 ms/epoch after the setup.
    fast = fitting.FitResult("manual --fast", losses=[1.0] * 11, epochs_run=11, seconds=2.005, setup_seconds=2.0,
                             setup_epochs=1, setup_what="1 epoch")
    assert fast.epoch_ms == pytest.approx(0.5)
    line = report.payoff_line(fast, reference_ms=1.5)  # E·1.5 ≥ 2000 + (E − 1)·0.5 from E = 1999.5
    assert line.startswith("--fast pays for its setup (2.000 s) from 2000 epochs on: manual --fast at 0.500 ms/epoch, "
                           "the original loop at 1.500")
    assert report.payoff_line(fast, reference_ms=0.4).startswith("--fast never pays for its setup (2.000 s) here")


def test_fast_fits_read_their_losses_once_per_log_interval():
    result = train.run(TrainConfig(update="both", fast=True, epochs=23, log_every=6), CPU)
    x, y, phi, w0 = original_problem()
    losses, _ = descent_losses(x, y, w0, 0.1, 23)
    for fitted in result.fits:
        assert fitted.log_every == 6 and fitted.epochs_run == 23 and fitted.setup_epochs == 1
        assert fitted.losses == pytest.approx(losses, abs=2e-6)
    assert "compiling" not in result.fits[1].setup_what  # the second fit reuses the first's compiled code
    assert result.reference_ms > 0


def test_a_closed_pipe_ends_the_trainer_quietly():
    """`python -m tensor_features.train | head -1`: the reader goes away; no traceback, exit 1."""
    # 5000 log lines (over 100 kB) do not fit in a pipe's buffer (64 kB on Linux, pipe(7)): the trainer
    # is still writing when the reader goes away.
    child = subprocess.Popen([sys.executable, "-m", "tensor_features.train", "--epochs", "5000", "--log-every", "1",
                              "--update", "manual"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    assert child.stdout.readline().startswith(b"tensor_features.train ")
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1 and stderr == "", stderr


@CUDA
def test_fast_cuda_trajectory_is_the_original_loop_within_float32_rounding(capsys):
    code, out = run_main(capsys, "--device", "cuda", "--fast", "--epochs", "50", "--log-every", "10")
    assert code == 0 and "CUDA graph capture" in out and "capture failed" not in out
    assert "setup" in out and "3 epochs on a side stream" in out
    x, y, phi, w0 = original_problem()
    losses, _ = descent_losses(x, y, w0, 0.1, 50)  # the original loop, in float64 by hand
    for label in ("manual --fast: last loss", "sgd --fast: last loss"):
        assert number_after(out, label) == pytest.approx(losses[-1], abs=2e-6)
    result = train.run(TrainConfig(update="both", fast=True, epochs=50, log_every=10), torch.device("cuda"))
    for fitted in result.fits:
        assert fitted.capture_seconds is not None and fitted.losses == pytest.approx(losses, abs=2e-6)


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
    (["--fast", "--outside-no-grad"], "--outside-no-grad"), (["--outside-no-grad", "--no-zero-grad"], "--no-zero-grad"),
    (["--beta", "2"], "--beta"), (["--loss", "sobolev", "--penalty", "2"], "--penalty"),
    (["--sweep", "--basis", "mlp"], "--sweep"), (["--plot", ""], "--plot"),
])
def test_bad_input_is_one_line_and_exit_2(args, named, capsys):
    assert named in usage_error(train.main, args, capsys)


def test_maths_that_breaks_after_parsing_is_a_usage_error(capsys, monkeypatch):
    x = torch.zeros(10, 1)  # every point the same: ΦᵀΦ is singular
    with pytest.raises(problem.ProblemError, match="ΦᵀΦ is singular") as raised:
        problem.exact_problem(x, torch.zeros(10, 1), 3, "monomial", model.Loss())
    assert raised.value.shortfall.nonzero == 0 and raised.value.shortfall.enough_points == 4
    monkeypatch.setattr(experiment, "load_data", lambda *args: (x, torch.zeros(10, 1)))
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


def test_bench_row_10_runs_small():
    from bench.rows import double_backward

    rows = double_backward.measure(CPU, argparse.Namespace(n=64, repeats=1))
    assert [row.key for row in rows] == ["10a", "10b", "10c"] and double_backward.NUMBER == 10
    for row in rows:
        assert row.cpu.value > 0 and row.cpu.reference > 0
        assert row.cpu.ratio == pytest.approx(row.cpu.value / row.cpu.reference)
    assert rows[0].cpu.value == rows[2].cpu.value  # the same sobolev epoch, against two references


# -- what a second reader of the printed report found (each sentence now pinned) ---------------------

def test_noise_0_has_an_optimum_of_0_and_within_means_float32_resolution(capsys, monkeypatch, tmp_path):
    summary = tmp_path / "summary.jsonl"
    monkeypatch.setenv("LAB_SUMMARY", str(summary))
    code, out = run_main(capsys, "--noise", "0", "--lr", "auto", "--epochs", "300")
    assert code == 0
    x, y, _, w0 = original_problem()
    y = x**2  # noise 0: y lies in the span of [x, x², x³], so the optimum is 0
    resolution = np.finfo(np.float32).eps * float((y.double() ** 2).mean())  # eps × mean(y²)
    _, best, eigenvalues = numpy_optimum(x, y)
    assert best < 1e-12
    losses, _ = descent_losses(x, y, w0, 2 / (eigenvalues[0] + eigenvalues[-1]), 300)
    within = next(epoch for epoch, value in enumerate(losses) if value - best <= resolution)
    tolerance = f"{resolution:.2g} (a tolerance: float32 eps × the mean squared target)"
    assert f"within {tolerance} of it from epoch {within}" in out
    verdict = json.loads(summary.read_text())["verdict"]  # no division by the optimum 0
    assert "(+" in verdict and "%" not in verdict and f"within {tolerance} from epoch {within}" in verdict


def test_a_sweep_on_too_few_points_says_which_n_works(capsys):
    # Every feature is 0 at x = 0; --n 4 has 4 nonzero x, so degree 5 of the sweep has rank 4 < 5.
    line = usage_error(train.main, ["--n", "4", "--sweep"], capsys)
    assert "--sweep at degree 5" in line and "use --n 6 or more" in line
    assert "--degree 6" not in line and "--basis legendre" not in line.split(":", 2)[-1]
    assert train.main(["--n", "6", "--sweep", "--epochs", "5"]) == 0  # 6 nonzero x: every degree up to 6 has rank D


def test_a_degree_needs_as_many_distinct_nonzero_x(capsys):
    # The features x, x², ... all vanish at x = 0, so D of them need D distinct nonzero x. The data's x
    # is read here to count them (an odd n may or may not put a point exactly at 0).
    x5 = load_data(5, 0.1, 0)[0]
    assert int((x5 != 0).sum()) == 4  # -1, -0.5, 0, 0.5, 1
    line = usage_error(train.main, ["--n", "5", "--degree", "5"], capsys)
    assert "degree 5 needs 5 distinct nonzero x and --n 5 gives 4" in line and "use --n 6 or more" in line
    assert "needs at least 4 points (got --n 3)" in usage_error(train.main, ["--n", "3", "--degree", "4"], capsys)
    assert train.main(["--n", "4", "--degree", "4", "--epochs", "3"]) == 0  # 4 nonzero x: full rank


def test_a_sweep_at_lr_auto_says_the_lr_changes_with_the_degree(capsys):
    _, out = run_main(capsys, "--sweep", "--lr", "auto", "--epochs", "5")
    assert "each degree's 2/(λmax+λmin)" in out and "same lr" not in out
    _, out = run_main(capsys, "--sweep", "--epochs", "5")
    # x and x² are orthogonal on the symmetric grid: D = 2's cosine is rounding, D = 1 has one column.
    assert "— (one column)" in out
    assert "max |cos| grows with every degree here (from D = 2" in out


def test_a_divergence_names_the_float32_sum_that_overflowed(capsys, monkeypatch, tmp_path):
    summary = tmp_path / "summary.jsonl"
    monkeypatch.setenv("LAB_SUMMARY", str(summary))
    _, out = run_main(capsys, "--lr", "3", "--update", "manual")
    x, y, _, w0 = original_problem()
    losses, _ = descent_losses(x, y, w0, 3.0, 100)  # float64, by hand: it never overflows
    float32_max = float(np.finfo(np.float32).max)
    first = next(epoch for epoch, value in enumerate(losses) if value * len(x) > float32_max)
    assert losses[first] < float32_max, "the mean itself is still a float32 number there"
    assert torch.full((100,), 1e37).mean().item() == math.inf  # mean() overflows with its sum
    assert f"manual: diverged at epoch {first}: its float32 loss stopped being finite" in out
    assert f"manual: {first + 1} epochs in" in out  # epochs 0..first ran; the last one's loss was not finite
    verdict = json.loads(summary.read_text())["verdict"]
    assert verdict.startswith("mse loss, lr 3, --epochs 100, last losses: manual diverged at epoch " + str(first))
    _, out = run_main(capsys, "--lr", "3")  # both updates diverge: their final w are inf or nan
    assert "the final w are not compared" in out and "identical" not in out


def test_one_epoch_is_identical_in_this_run_and_says_it_need_not_be(capsys):
    # One epoch: both updates start from the same w and log its loss before any update, so the
    # one logged loss is the same computation in the same order (bit-identical on every CPU);
    # the w gap after that one update is whatever this CPU's kernels round to.
    _, out = run_main(capsys, "--epochs", "1")
    assert "largest |loss_manual - loss_sgd| over 1 epoch: 0;" in out


def test_the_manual_and_sgd_comparison_reports_what_the_run_measured(capsys):
    # Whether w -= lr * w.grad and SGD's w.add_(w.grad, alpha=-lr) round alike depends on the
    # CPU's kernels (bit-identical on an Intel Xeon, not on an AMD EPYC): the report must say
    # whichever happened, and the gaps must stay within float32 rounding of the trajectory.
    _, out = run_main(capsys)
    loss_gap = number_after(out, "largest |loss_manual - loss_sgd| over 100 epochs:")
    w_gap = number_after(out, "max |w_manual - w_sgd| after the last update:")
    if loss_gap == 0 and w_gap == 0:
        assert "identical in this run" in out and "They need not be" in out
        assert "not bit-identical" not in out
    else:
        assert "not bit-identical" in out and "identical in this run" not in out
    x, y, _, w0 = original_problem()
    losses, w = descent_losses(x, y, w0, TrainConfig().lr, 100)  # float64, by hand
    eps = float(torch.finfo(torch.float32).eps)
    # Each epoch may round each of the 3 weights differently by an ulp or so; 100 epochs of a
    # contracting iteration cannot let that grow past a few hundred ulps of the values involved.
    assert w_gap <= 1000 * eps * max(abs(v) for v in w)
    assert loss_gap <= 1000 * eps * max(losses)


def test_compare_updates_prints_each_outcome():
    # Both branches on every machine, from hand-made results that are equal or one ulp apart.
    w = torch.tensor([0.5, 1.0, -0.25])
    same = fitting.FitResult("manual", losses=[2.0, 1.0], w=w.clone())
    twin = fitting.FitResult("sgd", losses=[2.0, 1.0], w=w.clone())
    nudged = fitting.FitResult("sgd", losses=[2.0, 1.0], w=torch.nextafter(w, w + 1))
    for other, identical in ((twin, True), (nudged, False)):
        buffer = io.StringIO()
        report.compare_updates(same, other, buffer)
        text = buffer.getvalue()
        assert ("identical in this run" in text) is identical
        assert ("not bit-identical" in text) is (not identical)
    assert "after the last update: 1.19e-07" in buffer.getvalue()  # the ulp of 1.0 in float32


@pytest.mark.parametrize("flag", ["--beta", "--penalty"])
def test_a_zero_weight_is_the_mse_loss_and_refused(flag, capsys):
    loss = "sobolev" if flag == "--beta" else "smooth"
    assert "not allowed" in usage_error(train.main, ["--loss", loss, flag, "0"], capsys)


def test_no_zero_grad_with_a_derivative_loss_compares_with_mse_also_without_zero_grad(capsys):
    _, out = run_main(capsys, "--loss", "sobolev", "--no-zero-grad", "--update", "manual", "--epochs", "20")
    assert "the original mse loop on the same data, lr and initial w, also without zero_()" in out


def accumulated_descent_losses(x, y, w0, lr, epochs):
    """float64 numpy, --no-zero-grad written out: .grad keeps every epoch's gradient, w -= lr * sum."""
    a, b = stacked_system(x, y)
    w, grad, losses = w0.double().cpu().numpy(), 0.0, []
    for _ in range(epochs):
        residual = a @ w - b
        losses.append(float((residual**2).sum() / len(x)))
        grad = grad + 2 / len(x) * a.T @ residual
        w = w - lr * grad
    return losses


def test_the_sweep_trains_without_zero_grad_when_asked():
    x, y, _, w0 = original_problem()
    config = TrainConfig(no_zero_grad=True, epochs=30, lr=0.01)
    row = experiment.degree_sweep(config, x, y, model.Loss(), degrees=[3])[0]
    expected = accumulated_descent_losses(x, y, w0, 0.01, 30)[-1]
    plain = descent_losses(x, y, w0, 0.01, 30)[0][-1]
    assert abs(expected - plain) > 1e-3 * plain, "the oracle must tell the two loops apart"
    assert row.final_loss == pytest.approx(expected, rel=1e-4)


def test_the_mlp_column_trains_without_zero_grad_when_asked():
    # The test's own loop: the same extractor (same seed), gradients summed across epochs by hand.
    x, y, _, w0 = original_problem()
    lr, epochs = 0.05, 4
    result, _ = fitting.fit_mlp(x, y, w0, fitting.FitPlan(lr, epochs, zero_grad=False), seed=0)
    torch.manual_seed(0)
    extractor = fitting.MLPFeatures(3)
    names = [name for name, _ in extractor.named_parameters()]
    params = [w0.clone(), *(p.detach().clone() for p in extractor.parameters())]
    sums = [torch.zeros_like(p) for p in params]
    losses = []
    for _ in range(epochs):
        leaves = [p.requires_grad_() for p in params]
        phi = torch.func.functional_call(extractor, dict(zip(names, leaves[1:])), (x,))
        loss = ((phi @ leaves[0] - y) ** 2).mean()
        grads = torch.autograd.grad(loss, leaves)
        losses.append(loss.item())
        with torch.no_grad():
            sums = [s + g for s, g in zip(sums, grads)]
            params = [p - lr * s for p, s in zip(leaves, sums)]
    assert result.losses == pytest.approx(losses, rel=1e-5)
    with_zero, _ = fitting.fit_mlp(x, y, w0, fitting.FitPlan(lr, epochs), seed=0)
    assert with_zero.losses[-1] != pytest.approx(losses[-1], rel=1e-5)


def test_a_derivative_loss_above_mse_stability_says_mse_would_grow(capsys):
    x, y, _, _ = original_problem()
    _, _, eigenvalues = numpy_optimum(x, y)
    lr = 1e6
    factor = max(abs(1 - lr * eigenvalues))
    _, out = run_main(capsys, "--loss", "sobolev", "--lr", "1e6", "--epochs", "2")
    assert f"mse at the same lr would grow w − w* by |1 − lr·λmax| = {factor:.4g} per epoch" in out
    assert "shrinks" not in out.split("the derivative rows moved")[1].splitlines()[0]


def test_plots_keep_every_curve_visible(monkeypatch, tmp_path):
    # Identical manual and SGD losses, the x² reference and the fit, the two optima: none hidden.
    from tensor_features import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    result = train.run(TrainConfig(update="both", loss="sobolev", epochs=5), CPU)
    result.fits[1].losses = list(result.fits[0].losses)  # identical, as on some CPUs
    plots.write_plots(tmp_path, result)
    losses = figures["loss_curves.png"].axes[0]
    labels = [line.get_label() for line in losses.get_lines()]
    assert any("the same losses as manual" in label for label in labels)
    sgd = next(line for line in losses.get_lines() if line.get_label().startswith("sgd"))
    assert sgd.get_linestyle() == "None" and sgd.get_marker() == "o"  # markers over the manual line
    optima = [line for line in losses.get_lines() if "optimum" in line.get_label()]
    assert len(optima) == 2 and optima[0].get_linewidth() > 2 * optima[1].get_linewidth()
    fit = figures["fit.png"].axes[0]
    by_label = {line.get_label(): line for line in fit.get_lines()}
    assert by_label["x², the clean curve"].get_zorder() > by_label["fit: predict() at new x"].get_zorder()
