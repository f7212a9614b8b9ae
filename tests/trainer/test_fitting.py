"""The training loop (tensor_features/trainer/fitting.py): each epoch against its gradient written out here,
SGD replayed by hand bit for bit, the fits against torch.linalg.lstsq and numpy's least squares on
a stacked system, the --fast loss against its float64 formula, and the fitted curve at new x."""

import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import _default_to_fused_or_foreach

from tests.support import CUDA, DEVICES
from tensor_features.trainer import fitting, model
from tensor_features.trainer.fast import (WARMUP_EPOCHS, FastFit, FastLoss, LossLog, fit_fast, payoff_epochs, rows_layout,
                                          rows_loss)
from tests.trainer.oracles import derivative_gradient, descent_losses, mse_gradient, numpy_optimum, original_problem

MUTANTS = [
    ("tensor_features/trainer/fitting.py", "w.grad.zero_()  # without this, next epoch's backward adds to this gradient",
     "w.grad.mul_(0.5)  # without this, next epoch's backward adds to this gradient"),
    ("tensor_features/trainer/fitting.py", "terms.total.backward(inputs=[w])  # x requires grad too",
     "terms.data.backward(inputs=[w])  # x requires grad too"),
    ("tensor_features/trainer/fitting.py", "with torch.no_grad():  # the original update\n            w -= lr * w.grad",
     "with torch.no_grad():  # the original update\n            w -= 0.5 * lr * w.grad"),
    ("tensor_features/trainer/fitting.py", "optimizer = torch.optim.SGD(parameters(w), lr=plan.lr)",
     "optimizer = torch.optim.SGD(parameters(w), lr=plan.lr, momentum=0.1)"),
    ("tensor_features/trainer/fitting.py", "loss = mse(phi @ w, y)\n    loss.backward()\n    optimizer.step()",
     "loss = mse(phi @ w, y)\n    optimizer.step()\n    loss.backward()"),
    ("tensor_features/trainer/fast.py", "prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0]))",
     "prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0] - 1))"),
    ("tensor_features/trainer/fitting.py", "_, slopes = batched_derivative(linear_model(features, w), x_new, create_graph=False)",
     "_, slopes = batched_derivative(linear_model(features, w), x_new**2, create_graph=False)"),
    # --fast: the loss log, the per-interval reads, the epoch's original lines, the pay-off
    ("tensor_features/trainer/fast.py", "        self.position += 1\n", "        self.position += 0\n"),
    ("tensor_features/trainer/fast.py", "        losses = self.values[:count].tolist()\n        self.position.zero_()",
     "        losses = self.values[:count].tolist()\n        pass"),
    ("tensor_features/trainer/fast.py", "losses = self.values[:count].tolist()", "losses = self.values[-count:].tolist()"),
    ("tensor_features/trainer/fast.py", "            result.diverged_at = epoch\n            return False",
     "            result.diverged_at = epoch + 1\n            return False"),
    ("tensor_features/trainer/fast.py", "        count = min(log_every, epochs - done)\n", "        count = log_every\n"),
    ("tensor_features/trainer/fast.py", "going = _keep_finite(result, runner.read(count), done)",
     "going = _keep_finite(result, runner.read(count), done + 1)"),
    ("tensor_features/trainer/fast.py", "# the original update, as in manual_step\n            w -= lr * w.grad",
     "# the original update, as in manual_step\n            w -= 0.5 * lr * w.grad"),
    ("tensor_features/trainer/fast.py", "                w.grad.zero_()\n        self.needs_compiling = False",
     "                pass\n        self.needs_compiling = False"),
    ("tensor_features/trainer/fast.py", "        if zero_grad:\n            optimizer.zero_grad()\n        loss = self.loss_fn",
     "        if False:\n            optimizer.zero_grad()\n        loss = self.loss_fn"),
    ("tensor_features/trainer/fast.py", "(setup_seconds * 1e3 - setup_epochs * fast_ms)", "(setup_seconds * 1e3)"),
    ("tensor_features/trainer/fast.py", "    if fast_ms >= default_ms:\n", "    if fast_ms > default_ms:\n"),
    ("bench/rows/epoch.py", "epochs = fast_path.payoff_epochs(setup_seconds, setup_epochs, fast_ms, default_ms)",
     "epochs = fast_path.payoff_epochs(setup_seconds, 1, fast_ms, default_ms)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- fitting.py
    # manual_step: dropped w.grad.zero_(): gradients accumulate in the default loop
    ('tensor_features/trainer/fitting.py', "        if zero_grad:\n            w.grad.zero_()  # without this, next epoch's backward adds to this gradient\n", "        pass  # without this, next epoch's backward adds to this gradient\n"),
    # sgd_step: dropped optimizer.zero_grad()
    ('tensor_features/trainer/fitting.py', '    if zero_grad:\n        optimizer.zero_grad()\n    loss = mse(phi @ w, y)\n', '    loss = mse(phi @ w, y)\n'),
    # manual_step: summed loss instead of mean: the manual update takes n× larger steps than SGD
    ('tensor_features/trainer/fitting.py', '    loss = ((pred - y) ** 2).mean()\n', '    loss = ((pred - y) ** 2).sum()\n'),
    # derivative_step: backward of the data term only: trains plain mse under a sobolev/smooth name
    ('tensor_features/trainer/fitting.py', 'terms.total.backward(inputs=[w])  # x requires grad too', 'terms.data.backward(inputs=[w])  # x requires grad too'),
    # rows_loss (--fast): off-by-one over the features: the last feature never enters the prediction
    ('tensor_features/trainer/fast.py', 'prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0]))', 'prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0] - 1))'),
    # predict(): no_grad instead of inference_mode: curve values are not inference tensors
    ('tensor_features/trainer/fitting.py', '    with torch.inference_mode():\n        return features(x) @ w\n', '    with torch.no_grad():\n        return features(x) @ w\n'),
    # ---------------------------------------------------------------- the trainer's new rooms (blind)
    # fitting.py: FitPlan's default leaves out w.grad.zero_(): FitPlan(lr, epochs) fits accumulate gradients and diverge/lag behind the original loop
    ('tensor_features/trainer/fitting.py', '    zero_grad: bool = True  # False: leave out w.grad.zero_() (--no-zero-grad)\n', '    zero_grad: bool = False  # False: leave out w.grad.zero_() (--no-zero-grad)\n'),
    # fitting.py: fit() ignores plan.zero_grad: `--no-zero-grad` (mse) trains exactly like the default run, the accumulated-gradient breakage never shows
    ('tensor_features/trainer/fitting.py', '    lr, zero_grad = plan.lr, plan.zero_grad\n', '    lr, zero_grad = plan.lr, True\n'),
    # fitting.py: _train records the divergence one epoch late: diverged_at is the epoch after the first non-finite loss, so the report says "diverged at epoch k+1"
    ('tensor_features/trainer/fitting.py', '            result.diverged_at = epoch\n', '            result.diverged_at = epoch + 1\n'),
]


def test_manual_step_is_one_gradient_step_and_resets_grad():
    x, y, phi, w0 = original_problem()
    w = w0.clone().requires_grad_()
    fitting.manual_step(phi, y, w, lr=0.1)
    assert torch.allclose(w.detach(), w0 - 0.1 * mse_gradient(phi, w0, y), atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0 and w.is_leaf


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_step_is_one_gradient_step_of_both_terms(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w = w0.clone().requires_grad_()
    loss, data = fitting.derivative_step(model.Loss(name, weight), model.feature_map, x, y, w, lr=0.1)
    expected = w0 - 0.1 * (mse_gradient(phi, w0, y) + derivative_gradient(x, w0, weight, target))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0
    slope = w0[0] + 2 * w0[1] * x + 3 * w0[2] * x**2
    assert data == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), rel=1e-5)
    assert loss == pytest.approx(data + weight * ((slope - target) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_is_bitwise_the_fused_manual_update(device):
    # SGD's step is w.add_(w.grad, alpha=-lr) under no_grad: replay exactly that by hand. Exact
    # equality is a claim about every machine here because both sides run the same ops in the same
    # order on the same values (forward, backward, then one add with alpha): nothing differs that a
    # CPU could round differently. SGD takes its foreach kernel where one exists for the device (CUDA;
    # torch/optim/optimizer.py, _default_to_fused_or_foreach) and param.add_ elsewhere: replay that one.
    x, y, phi, w0 = original_problem(device)
    sgd = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100, update="sgd"))
    _, foreach = _default_to_fused_or_foreach([w0], differentiable=False)
    w = w0.clone().requires_grad_()
    losses = []
    for _ in range(100):
        loss = ((phi @ w - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            if foreach:
                torch._foreach_add_([w], [w.grad], alpha=-0.1)
            else:
                w.add_(w.grad, alpha=-0.1)
            w.grad = None
    assert losses == sgd.losses
    assert torch.equal(w.detach(), sgd.w)


def test_original_manual_update_agrees_with_sgd_to_float32_rounding():
    x, y, phi, w0 = original_problem()
    manual = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100, update="manual"))
    sgd = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100, update="sgd"))
    assert manual.losses == pytest.approx(sgd.losses, rel=1e-5)
    assert torch.allclose(manual.w, sgd.w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_converges_to_the_lstsq_optimum(device):
    x, y, phi, w0 = original_problem(device)
    # Oracle: torch.linalg.lstsq (QR-based), independent of the trainer's chunked normal equations.
    phi64, y64 = phi.double().cpu(), y.double().cpu()
    w_star = torch.linalg.lstsq(phi64, y64).solution
    best = ((phi64 @ w_star - y64) ** 2).mean().item()
    result = fitting.fit(phi, y, w0, fitting.FitPlan(lr=1.0, epochs=3000))
    assert result.final_loss == pytest.approx(best, rel=0.01)
    assert torch.allclose(result.w.cpu().double(), w_star, atol=1e-2)


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_losses_train_to_their_stacked_optimum(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w_star, best, eigenvalues = numpy_optimum(x, y, weight, target)
    lr = 2 / (eigenvalues[0] + eigenvalues[-1])  # the best fixed step, from numpy's eigenvalues
    for update in ("manual", "sgd"):
        result = fitting.fit_loss(model.Loss(name, weight), model.feature_map, x, y, w0, fitting.FitPlan(lr, 150, update))
        assert result.final_loss == pytest.approx(best, rel=1e-3)
        assert np.allclose(result.w.numpy(), w_star, atol=1e-3)
        assert len(result.data_losses) == len(result.losses) == 150


def test_a_zero_weight_runs_bit_for_bit_like_the_mse_path():
    # Exact on every machine: with weight 0 the derivative path runs the mse path's ops in the same order
    # on the same values (Φ(x) is built by the same feature_map, then the same matmul and mean), and adds
    # only exact zeros to them: total = data + 0·derivative, and w.grad = the data gradient + a
    # gradient scaled by 0. x + 0 is x in IEEE arithmetic, whatever the CPU.
    x, y, phi, w0 = original_problem()
    for update in ("manual", "sgd"):
        plain = fitting.fit(phi, y, w0, fitting.FitPlan(0.1, 100, update))
        for name in ("sobolev", "smooth"):
            zero = fitting.fit_loss(model.Loss(name, 0.0), model.feature_map, x, y, w0, fitting.FitPlan(0.1, 100, update))
            assert zero.losses == plain.losses and torch.equal(zero.w, plain.w)


def test_lr_auto_converges_faster_than_the_original_lr():
    x, y, phi, w0 = original_problem()
    optimum = model.least_squares_optimum(phi, y)
    eigenvalues = torch.linalg.eigvalsh(2 * phi.double().T @ phi.double() / len(x))
    assert optimum.best_lr == pytest.approx(2 / (eigenvalues[0] + eigenvalues[-1]).item())
    auto = model.epochs_to_within(fitting.fit(phi, y, w0, fitting.FitPlan(optimum.best_lr, 1000)).losses, optimum.loss)
    original = model.epochs_to_within(fitting.fit(phi, y, w0, fitting.FitPlan(0.1, 1000)).losses, optimum.loss)
    assert auto is not None and original is not None and auto < original


def test_fast_loss_is_the_original_loss_with_the_same_gradient():
    x, y, phi, w0 = original_problem()
    fast = FastLoss(rows_layout(phi), y, compile=False)
    w = w0.clone().requires_grad_()
    loss = fast.manual_step(w, lr=0.0)  # lr 0: keep w, look at the loss and the gradient
    phi64, y64, w64 = phi.double(), y.double(), w0.double()
    assert loss == pytest.approx(((phi64 @ w64 - y64) ** 2).mean().item(), rel=1e-6)
    w.grad = None
    rows_loss(w, fast.phi_rows, fast.y_flat).backward()
    assert torch.allclose(w.grad.double(), mse_gradient(phi64, w64, y64), atol=1e-6)
    assert rows_layout(phi).T.is_contiguous() and torch.equal(rows_layout(phi), phi)


def test_fast_fit_follows_the_original_trajectory():
    x, y, phi, w0 = original_problem()
    original = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100))
    for update in ("manual", "sgd"):
        fast = fit_fast(FastLoss(phi, y, compile=False), w0, fitting.FitPlan(lr=0.1, epochs=100, update=update))
        assert fast.losses == pytest.approx(original.losses, rel=1e-5)
        assert torch.allclose(fast.w, original.w, rtol=1e-5, atol=1e-6)


def test_forgetting_zero_grad_is_worse():
    x, y, phi, w0 = original_problem()
    good = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100))
    bad = fitting.fit(phi, y, w0, fitting.FitPlan(lr=0.1, epochs=100, zero_grad=False))
    assert bad.diverged_at is not None or bad.final_loss > 2 * good.final_loss


def test_divergence_is_detected_not_propagated():
    x, y, phi, w0 = original_problem()
    result = fitting.fit(phi, y, w0, fitting.FitPlan(lr=50.0, epochs=500))
    assert result.diverged_at is not None and all(math.isfinite(loss) for loss in result.losses)


def test_fitted_curve_is_the_fit_and_its_derivative_at_new_x():
    w = torch.tensor([[0.1], [0.9], [0.2]])
    curve = fitting.fitted_curve(model.feature_map, w)
    x = torch.linspace(-1, 1, 201).unsqueeze(1)
    assert torch.allclose(curve.values, 0.1 * x + 0.9 * x**2 + 0.2 * x**3, atol=1e-6)
    assert torch.allclose(curve.slopes, 0.1 + 1.8 * x + 0.6 * x**2, atol=1e-6)
    assert curve.values.is_inference() and not curve.values.requires_grad


# -- --fast: the loss log on the device, read once per interval; the CUDA graph (skips without CUDA) --------

def rows_epochs_by_hand(phi, y, w0, lr, epochs, update="manual", zero_grad=True, loss_fn=None):
    """The --fast epoch written out here, with the loss read by .item() every epoch: (losses, w).

    The prediction is Σ_k w_k Φ_k typed in term by term, in the order rows_loss adds them, so that
    in float32 the eager loss rounds exactly as rows_loss's does (0 + a is a, exactly)."""
    phi_rows, y_flat = phi.T.contiguous(), y.reshape(-1)
    w = w0.clone().requires_grad_()
    optimizer = torch.optim.SGD([w], lr=lr) if update == "sgd" else None
    losses = []
    for _ in range(epochs):
        if optimizer is not None and zero_grad:
            optimizer.zero_grad()
        if loss_fn is None:
            loss = ((w[0] * phi_rows[0] + w[1] * phi_rows[1] + w[2] * phi_rows[2] - y_flat) ** 2).mean()
        else:
            loss = loss_fn(w, phi_rows, y_flat)
        loss.backward()
        losses.append(loss.item())
        if optimizer is not None:
            optimizer.step()
            continue
        with torch.no_grad():
            w -= lr * w.grad
            if zero_grad:
                w.grad.zero_()
    return losses, w.detach()


@pytest.mark.parametrize("update, zero_grad", [("manual", True), ("sgd", True), ("manual", False), ("sgd", False)])
def test_fast_loss_log_is_the_per_epoch_item_trajectory_exactly(update, zero_grad):
    # 100 epochs read every 7: the first epoch alone (setup), 14 intervals of 7, one of 1.
    x, y, phi, w0 = original_problem()
    fast = FastLoss(phi, y, compile=False)
    result = fit_fast(fast, w0, fitting.FitPlan(0.1, 100, update, zero_grad, log_every=7))
    losses, w = rows_epochs_by_hand(phi, y, w0, 0.1, 100, update, zero_grad)
    assert result.losses == losses and torch.equal(result.w, w)
    assert result.epochs_run == 100 and result.setup_epochs == 1 and result.log_every == 7
    assert result.diverged_at is None and result.capture_seconds is None  # no CUDA graph on the CPU


def test_compiled_fast_loss_log_is_its_per_epoch_item_trajectory_exactly():
    x, y, phi, w0 = original_problem()
    fast = FastLoss(phi, y)
    result = fit_fast(fast, w0, fitting.FitPlan(0.1, 30, log_every=4))
    losses, w = rows_epochs_by_hand(phi, y, w0, 0.1, 30, loss_fn=fast.loss_fn)  # the same compiled code
    assert result.losses == losses and torch.equal(result.w, w)
    x64, y64 = x.double(), y.double()
    phi64 = torch.cat([x64, x64**2, x64**3], dim=1)  # and against float64 by hand: float32 rounding
    w64 = w0.double()
    for epoch in range(30):
        assert result.losses[epoch] == pytest.approx(((phi64 @ w64 - y64) ** 2).mean().item(), rel=1e-5)
        w64 = w64 - 0.1 * mse_gradient(phi64, w64, y64)


def test_fast_divergence_is_seen_when_its_interval_is_read():
    x, y, phi, w0 = original_problem()
    lr, n = 50.0, len(x)
    losses64, _ = descent_losses(x, y, w0, lr, 30)
    # Oracle: float32's mean sums n squares first, so the first float32 loss that is not finite is the
    # first epoch whose float64 sum n·loss passes float32's largest value; both sides of it by a margin.
    largest = torch.finfo(torch.float32).max
    first = next(epoch for epoch, loss in enumerate(losses64) if n * loss > largest)
    assert n * losses64[first - 1] < largest / 2 and n * losses64[first] > 2 * largest
    plain = fitting.fit(phi, y, w0, fitting.FitPlan(lr, 30))
    fast = fit_fast(FastLoss(phi, y, compile=False), w0, fitting.FitPlan(lr, 30, log_every=7))
    assert plain.diverged_at == fast.diverged_at == first == 12
    assert plain.epochs_run == first + 1  # a .item() every epoch: stops at once
    # Read after epoch 0, then after 7 more (epochs 1..7), then after epochs 8..14: 12 is in that one.
    assert fast.epochs_run == 1 + 7 * math.ceil(first / 7) == 15
    assert fast.losses == pytest.approx(losses64[:first], rel=1e-4) and len(fast.losses) == first
    # w is the w after the last epoch run: 13 updates for the plain loop, 15 for --fast (still finite:
    # the gradient 2/n Φᵀ(Φw − y) has not overflowed yet, only the sum of squares has).
    for result, updates in ((plain, 13), (fast, 15)):
        _, w64 = descent_losses(x, y, w0, lr, updates)
        assert np.linalg.norm(result.w.double().numpy() - w64) < 1e-3 * np.linalg.norm(w64)


def test_the_loss_log_keeps_what_was_recorded_until_read():
    log = LossLog(4, torch.device("cpu"))
    for value in (0.5, 0.25, 0.125):
        log.record(torch.tensor(value))
    assert log.read(3) == [0.5, 0.25, 0.125]
    log.record(torch.tensor(2.0))
    assert log.read(1) == [2.0]  # after a read, the next epoch writes the first slot again
    x, y, phi, w0 = original_problem()
    runner = FastFit(FastLoss(phi, y, compile=False), w0, fitting.FitPlan(0.1, 4, log_every=4))
    runner.setup(10)
    with pytest.raises(ValueError, match="holds 4 epochs"):
        runner.run(4)  # 1 + 4 > 4: refused before any epoch runs
    runner.run(3)
    assert len(runner.read(4)) == 4
    with pytest.raises(ValueError, match="a CUDA graph needs the data on a CUDA device"):
        FastLoss(phi, y, cuda_graph=True)


def test_payoff_epochs_by_hand():
    # 2 s of setup for 3 epochs, then 0.5 ms/epoch against 1.5: E·1.5 ≥ 2000 + (E − 3)·0.5 from E = 1998.5.
    assert payoff_epochs(2.0, 3, 0.5, 1.5) == 1999
    assert 1999 * 1.5 >= 2000 + 1996 * 0.5 and 1998 * 1.5 < 2000 + 1995 * 0.5
    assert payoff_epochs(2.0, 1, 1.5, 1.5) is None  # not faster per epoch: never
    assert payoff_epochs(0.001, 1, 0.5, 1.5) == 1  # a setup no slower than its epoch: from the first


def test_bench_row_3_says_when_fast_pays_off():
    from bench.rows import epoch

    # On CUDA the setup is 3 warm-up epochs: 2 s, then 0.5 ms against 1.5 pays off from 1999 epochs (see above).
    assert epoch.payoff_note(2.0, 3, 0.5, 1.5) == "pays off from 1999 epochs on (3d vs 3a − 3c)"
    assert epoch.payoff_note(2.0, 1, 0.75, 0.5) == "never pays off (3c ≥ 3a)"


@CUDA
@pytest.mark.parametrize("update, zero_grad", [("manual", True), ("sgd", True), ("manual", False), ("sgd", False)])
def test_cuda_graph_replays_the_eager_epoch_exactly(update, zero_grad):
    # The same eager kernels, launched one by one or replayed from a graph: the same bits.
    x, y, phi, w0 = original_problem("cuda")
    plan = fitting.FitPlan(0.1, 60, update, zero_grad, log_every=7)
    graphed = fit_fast(FastLoss(phi, y, compile=False, cuda_graph=True), w0, plan)
    eager = fit_fast(FastLoss(phi, y, compile=False, cuda_graph=False), w0, plan)
    assert graphed.graph_error is None and graphed.capture_seconds is not None
    assert graphed.setup_epochs == WARMUP_EPOCHS and eager.capture_seconds is None
    assert graphed.losses == eager.losses and torch.equal(graphed.w, eager.w)
    by_hand, w = rows_epochs_by_hand(phi, y, w0, 0.1, 60, update, zero_grad)
    assert graphed.losses == pytest.approx(by_hand, rel=1e-5) and torch.allclose(graphed.w, w, atol=1e-6)


@CUDA
@pytest.mark.parametrize("update", ["manual", "sgd"])
def test_cuda_fast_fit_matches_the_eager_default_within_float32_rounding(update):
    x, y, phi, w0 = original_problem("cuda")
    default = fitting.fit(phi, y, w0, fitting.FitPlan(0.1, 100, update))
    fast = fit_fast(FastLoss(phi, y), w0, fitting.FitPlan(0.1, 100, update, log_every=10))
    assert fast.graph_error is None and fast.capture_seconds is not None and fast.epochs_run == 100
    assert fast.losses == pytest.approx(default.losses, rel=1e-5)
    assert torch.allclose(fast.w, default.w, rtol=1e-5, atol=1e-6)
    losses64, w64 = descent_losses(x, y, w0, 0.1, 100)  # and both against float64 by hand
    assert fast.losses == pytest.approx(losses64, rel=1e-5)
    assert np.allclose(fast.w.cpu().double().numpy(), w64, atol=1e-5)


@CUDA
def test_cuda_fast_divergence_is_seen_when_its_interval_is_read():
    x, y, phi, w0 = original_problem("cuda")
    plain = fitting.fit(phi, y, w0, fitting.FitPlan(50.0, 30))
    fast = fit_fast(FastLoss(phi, y), w0, fitting.FitPlan(50.0, 30, log_every=7))
    assert fast.diverged_at == plain.diverged_at is not None and fast.capture_seconds is not None
    # Read after the 3 warm-up epochs, then every 7: the read that saw it ends at 3 + 7k > diverged_at.
    assert fast.epochs_run == 3 + 7 * math.ceil((fast.diverged_at + 1 - 3) / 7)


@CUDA
def test_cuda_bench_row_3_runs_small():
    from bench.rows import epoch

    rows = epoch.epoch(torch.device("cuda"), 2**16, repeats=2)
    assert [row.key for row in rows] == ["3a", "3b", "3c", "3d"]
    for row in rows[:3]:
        assert row.cpu.value > 0 and row.cpu.reference > 0  # CUDA-event milliseconds, the floor's included
    assert "graph capture (" in rows[3].cpu.note and "pays off" in rows[3].cpu.note


def test_fast_keeps_a_compile_cache_per_cpu_capability(monkeypatch):
    # torch.compile's cache does not tell AVX-512 code from AVX2 code: each capability its own folder,
    # unless the user chose one.
    import os

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded, so that the test's change is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    FastLoss(torch.ones(4, 3), torch.ones(4, 1))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].endswith(os.sep + torch.backends.cpu.get_cpu_capability())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/chosen")
    FastLoss(torch.ones(4, 3), torch.ones(4, 1))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/chosen"
