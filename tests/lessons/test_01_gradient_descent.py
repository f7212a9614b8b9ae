"""01 gradient descent: every value the lesson's checks saw, the locals its observations left and the
numbers its notes and expectations print, against oracles written here in NumPy float64: the trainer's
data with Φ = [x, x², x³] built here, w0 drawn here from initial_weights' generator, the least-squares
optimum (numpy.linalg.lstsq), the Hessian's spectrum (numpy.linalg.eigh of 2ΦᵀΦ/n) and gradient
descent in closed form, with no loop: on a quadratic, w_k = w* + V diag((1 − lr·λ)^k) Vᵀ(w0 − w*) and
L(w_k) = L* + Σ λᵢ/2 cᵢ² (1 − lr·λᵢ)^(2k), c = Vᵀ(w0 − w*). TRY_PROMISES: what each of the lesson's
Try lines does (tests/lab/test_tries.py)."""

import math
import re

import numpy as np
import pytest
import torch

from tests.support import DEVICES, Promise, load_lesson, quiet_lab
from tensor_features.load_data import load_data

lesson = load_lesson("01_derivatives_by_hand_gradient_descent.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  largest_gap = ", "FAIL  w = ")),
    Promise(exit=1, shows=("FAIL  largest_gap = ",)),
    Promise(exit=1, shows=("FAIL  falls_every_epoch = False",)),
]

MUTANTS = [
    # [1]: the gradient without its factor 2 (half steps)
    ("01_derivatives_by_hand_gradient_descent.py", "        g = 2 * phi.T @ residual / n  # the gradient, by hand",
     "        g = phi.T @ residual / n  # the gradient, by hand"),
    # [1]: another step size than the trainer's
    ("01_derivatives_by_hand_gradient_descent.py", "    lr, epochs = 0.1, 100\n    w = w0.clone()  # a plain tensor",
     "    lr, epochs = 0.2, 100\n    w = w0.clone()  # a plain tensor"),
    # [2]: the trainer's loop without w.grad.zero_()
    ("01_derivatives_by_hand_gradient_descent.py", "trainer_losses.append(manual_step(phi, y, w_trainer, lr))",
     "trainer_losses.append(manual_step(phi, y, w_trainer, lr, zero_grad=False))"),
    # [3]: the optimum's loss summed instead of averaged
    ("01_derivatives_by_hand_gradient_descent.py", "    loss_star = ((phi64 @ w_star - y64) ** 2).mean().item()",
     "    loss_star = ((phi64 @ w_star - y64) ** 2).sum().item()"),
    # [3]: the error at the end measured from w0 instead of w
    ("01_derivatives_by_hand_gradient_descent.py", "    error_end = eigenvectors.T @ (w.double() - w_star)",
     "    error_end = eigenvectors.T @ (w0.double() - w_star)"),
    # [4]: λmin taken for λmax
    ("01_derivatives_by_hand_gradient_descent.py", "    lam_max = eigenvalues[-1].item()", "    lam_max = eigenvalues[0].item()"),
    # [4]: the step above the limit further above it
    ("01_derivatives_by_hand_gradient_descent.py", "below, above = 1.9 / lam_max, 2.2 / lam_max", "below, above = 1.9 / lam_max, 2.5 / lam_max"),
    # the helper: another starting w
    ("01_derivatives_by_hand_gradient_descent.py", "initial_weights(3, seed=0, device=device)", "initial_weights(3, seed=1, device=device)"),
]

# Written by a tester who had not read these tests, from the lesson alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # data: noise 0.1 -> 0.2 in the shared setup: every loss, w, L(w*) and eigen-ratio changes
    ("01_derivatives_by_hand_gradient_descent.py", "x, y = load_data(n=100, noise=0.1, seed=0, device=device)",
        "x, y = load_data(n=100, noise=0.2, seed=0, device=device)"),
    # starting weights drawn with seed 1 instead of 0: every printed loss and final w change
    ("01_derivatives_by_hand_gradient_descent.py", "return feature_map(x), y, initial_weights(3, seed=0, device=device)",
        "return feature_map(x), y, initial_weights(3, seed=1, device=device)"),
    # [1] hand gradient divides by n - 1 instead of n: slightly larger steps, [1]'s losses drift lower
    ("01_derivatives_by_hand_gradient_descent.py", "g = 2 * phi.T @ residual / n  # the gradient, by hand",
        "g = 2 * phi.T @ residual / (n - 1)  # the gradient, by hand"),
    # [1] residual sign flipped (y - Φw): gradient ascent, [1]'s losses grow instead of falling
    ("01_derivatives_by_hand_gradient_descent.py", "        residual = phi @ w - y\n        losses.append(",
        "        residual = y - phi @ w\n        losses.append("),
    # [1] lr 0.05 instead of 0.1 in the hand loop: its losses at epochs 20..99 are higher
    ("01_derivatives_by_hand_gradient_descent.py", "    lr, epochs = 0.1, 100\n    w = w0.clone()  # a plain tensor",
        "    lr, epochs = 0.05, 100\n    w = w0.clone()  # a plain tensor"),
    # [1] table off by one: prints losses of epochs 1, 21, 41, ... under the headers 0, 20, 40, ...
    ("01_derivatives_by_hand_gradient_descent.py", "\"  \".join(f\"{loss:7.4f}\" for loss in losses[::20])",
        "\"  \".join(f\"{loss:7.4f}\" for loss in losses[1::20])"),
    # [2] trainer's loop steps with lr/2: its losses part from the hand loop's, largest_gap grows
    ("01_derivatives_by_hand_gradient_descent.py", "trainer_losses.append(manual_step(phi, y, w_trainer, lr))",
        "trainer_losses.append(manual_step(phi, y, w_trainer, lr / 2))"),
    # [2] max -> min: reports the smallest relative gap instead of the largest
    ("01_derivatives_by_hand_gradient_descent.py", "    largest_gap = max(abs(mine - theirs) / theirs",
        "    largest_gap = min(abs(mine - theirs) / theirs"),
    # [3] w = w0 without clone: the descent mutates w0, so error_start == error_end and every ratio is 1
    ("01_derivatives_by_hand_gradient_descent.py", "    w = w0.clone()\n    for epoch in range(epochs):\n        w -= lr * (2 * phi.T @ (phi @ w - y) / n)",
        "    w = w0\n    for epoch in range(epochs):\n        w -= lr * (2 * phi.T @ (phi @ w - y) / n)"),
    # [3] L(w*) as a sum, not a mean: 100x too large (1.034), so loss_end > loss_star becomes False
    ("01_derivatives_by_hand_gradient_descent.py", "loss_star = ((phi64 @ w_star - y64) ** 2).mean().item()",
        "loss_star = ((phi64 @ w_star - y64) ** 2).sum().item()"),
    # [3] Hessian without the factor 2: eigenvalues halved, expected (1 - lr*λ)^100 and epoch count change
    ("01_derivatives_by_hand_gradient_descent.py", "torch.linalg.eigh(2 * phi64.T @ phi64 / n)",
        "torch.linalg.eigh(phi64.T @ phi64 / n)"),
    # [3] dropped transpose: errors projected with eigenvectors instead of eigenvectors.T, ratios change
    ("01_derivatives_by_hand_gradient_descent.py", "error_start = eigenvectors.T @ (w0.double() - w_star)",
        "error_start = eigenvectors @ (w0.double() - w_star)"),
    # [3] lam_min takes the largest eigenvalue: epochs to 1% printed for λmax (~47) instead of 1323
    ("01_derivatives_by_hand_gradient_descent.py", "    lam_min = eigenvalues[0].item()",
        "    lam_min = eigenvalues[-1].item()"),
    # [4] second step size starts from where the first ended (no fresh clone): 'above' run starts at ~0.0103
    ("01_derivatives_by_hand_gradient_descent.py", "        w = w0.clone()\n        for epoch in range(50):",
        "        w = w0\n        for epoch in range(50):"),
    # [4] above = 2.4/λmax with the expected value following it: growth 1.96 per epoch, not 1.44
    ("01_derivatives_by_hand_gradient_descent.py", "below, above = 1.9 / lam_max, 2.2 / lam_max",
        "below, above = 1.9 / lam_max, 2.4 / lam_max"),
    # [4] growth ratio inverted (earlier/later): 0.694 instead of 1.44
    ("01_derivatives_by_hand_gradient_descent.py", "growth_per_epoch = losses[above][-1] / losses[above][-2]",
        "growth_per_epoch = losses[above][-2] / losses[above][-1]"),
    # [4] 49 epochs per step size instead of 50: final losses of both runs change
    ("01_derivatives_by_hand_gradient_descent.py", "        for epoch in range(50):",
        "        for epoch in range(49):"),
]


# -- the oracle: the trainer's problem in float64, and gradient descent in closed form ------------------

N, LR, EPOCHS = 100, 0.1, 100  # python -m tensor_features.train's defaults


def problem32() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trainer's float32 data (load_data's defaults), Φ = [x, x², x³] built here, and w0 drawn here:
    initial_weights(3, seed) draws randn(3, 1) from a generator seeded with seed + 1."""
    x, y = load_data(N, 0.1, 0)
    phi = torch.cat([x, x**2, x**3], dim=1)
    w0 = torch.randn(3, 1, generator=torch.Generator().manual_seed(0 + 1))
    return phi, y, w0


class Quadratic:
    """L(w) = mean((Φw − y)²) in float64 (the float32 data, converted exactly), solved with NumPy."""

    def __init__(self):
        phi, y, w0 = problem32()
        self.phi, self.y, self.w0 = (t.double().numpy() for t in (phi, y, w0))
        self.w_star = np.linalg.lstsq(self.phi, self.y, rcond=None)[0]
        self.loss_star = float(np.mean((self.phi @ self.w_star - self.y) ** 2))
        self.hessian = 2 * self.phi.T @ self.phi / N
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(self.hessian)  # ascending
        self.c = self.eigenvectors.T @ (self.w0 - self.w_star)  # the starting error along each eigenvector

    def w(self, lr: float, k: int) -> np.ndarray:
        """w after k steps: the error along each eigenvector multiplied by (1 − lr·λ)^k."""
        return self.w_star + self.eigenvectors @ ((1 - lr * self.eigenvalues[:, None]) ** k * self.c)

    def losses(self, lr: float, epochs: int) -> np.ndarray:
        """L(w_0), ..., L(w_{epochs−1}): L* + Σ λ/2 c² (1 − lr·λ)^(2k)."""
        k = np.arange(epochs)[:, None]
        factors = (1 - lr * self.eigenvalues[None, :]) ** (2 * k)
        return self.loss_star + (factors * (self.eigenvalues * self.c[:, 0] ** 2 / 2)).sum(axis=1)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        return 2 * self.phi.T @ (self.phi @ w - self.y) / N


@pytest.fixture(scope="module")
def quadratic() -> Quadratic:
    return Quadratic()


def cpu64(value) -> np.ndarray:
    return value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def numbers(text: str) -> list[float]:
    return [float(t) for t in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


def printed_check(printed: str, label: str) -> tuple[str, str, str]:
    """(observed, expected, tolerance) as a check line printed them: `label = observed`, then
    `expected X`, with `(±atol + rtol·|expected|)` when the match was close but not equal."""
    match = re.search(rf"(?:ok|FAIL)  {re.escape(label)} = (.*?)\s+expected (.*?)(?: \((±[^)]*)\))?  — ",
                      printed, re.S)
    assert match, f"no check line for {label!r} in:\n{printed}"
    return match[1].strip(), match[2].strip(), match[3] or ""


def test_the_closed_form_oracle_is_the_descent_loop(quadratic):
    """The oracle itself, against a float64 loop of w -= lr·2Φᵀ(Φw − y)/n and the loss's definition."""
    w, losses = quadratic.w0.copy(), []
    for _ in range(EPOCHS):
        losses.append(float(np.mean((quadratic.phi @ w - quadratic.y) ** 2)))
        w = w - LR * quadratic.gradient(w)
    assert np.allclose(quadratic.losses(LR, EPOCHS), losses, rtol=1e-12, atol=0)
    assert np.allclose(quadratic.w(LR, EPOCHS), w, rtol=1e-12, atol=1e-14)
    assert np.allclose(quadratic.gradient(quadratic.w_star), 0, atol=1e-13)  # the optimum's gradient
    # L(w*) below every other w tried (the losses of the run above, each at another w).
    assert quadratic.loss_star < min(losses)


# -- the helper ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_original_regression_is_the_trainers_data_on_the_device(device):
    phi, y, w0 = lesson.original_regression(torch.device(device))
    own_phi, own_y, own_w0 = problem32()
    assert (phi.shape, y.shape, w0.shape) == ((N, 3), (N, 1), (3, 1))
    assert {t.dtype for t in (phi, y, w0)} == {torch.float32}
    assert {t.device.type for t in (phi, y, w0)} == {device}
    assert torch.allclose(phi.cpu(), own_phi, rtol=1e-6, atol=0)
    assert torch.equal(y.cpu(), own_y) and torch.equal(w0.cpu(), own_w0)  # drawn on the CPU, then moved
    assert phi[:, 0].min() == -1 and phi[:, 0].max() == 1  # x spans [-1, 1]


# -- [1] by hand ----------------------------------------------------------------------------------------------

def test_by_hand_follows_gradient_descent_in_closed_form(lab, quadratic):
    seen = lab.run(lesson.by_hand)
    out = seen.names
    assert (out["lr"], out["epochs"]) == (LR, EPOCHS)
    assert np.allclose(cpu64(out["phi"]), quadratic.phi, rtol=1e-6, atol=0)
    # float32 against the exact descent: 100 steps of float32 rounding, none enlarged (|1 − lr·λ| < 1).
    assert len(out["losses"]) == EPOCHS
    assert np.allclose(out["losses"], quadratic.losses(LR, EPOCHS), rtol=1e-4, atol=0)
    assert np.allclose(cpu64(out["w"]), quadratic.w(LR, EPOCHS), rtol=1e-4, atol=1e-5)
    # g is the last gradient: at w after 99 steps.
    assert np.allclose(cpu64(out["g"]), quadratic.gradient(quadratic.w(LR, EPOCHS - 1)), rtol=1e-3, atol=1e-5)
    assert np.allclose(cpu64(out["w0"]), quadratic.w0)  # the loop worked on a copy
    assert seen["(w.requires_grad, g.requires_grad, g.grad_fn)"] == (False, False, None)
    exact = quadratic.losses(LR, EPOCHS)
    assert np.all(np.diff(exact) < 0) and seen["falls_every_epoch"] is True
    # Each step lowers the exact loss by far more than float32 rounding of a loss near 0.01 (~1e-9).
    assert -np.diff(exact).max() > 1e-6


def test_by_hand_needs_no_autograd_at_all(lab, monkeypatch):
    """Under torch.no_grad(), with backward() and autograd.grad made to raise, [1] runs as before."""
    plain = lab.run(lesson.by_hand).names["losses"]

    def forbidden(*args, **kwargs):
        raise AssertionError("autograd was called")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    with torch.no_grad():
        again = lab.run(lesson.by_hand).names["losses"]
    assert np.allclose(again, plain, rtol=1e-6, atol=0)


def test_by_hand_prints_its_losses(quadratic):
    lab = quiet_lab()
    lab.run(lesson.by_hand)
    printed = lab.stream.getvalue()
    epochs_line = next(line for line in printed.splitlines() if line.strip().startswith("epoch "))
    loss_line = next(line for line in printed.splitlines() if line.strip().startswith("loss "))
    shown = [int(e) for e in numbers(epochs_line)]
    assert shown == [0, 20, 40, 60, 80, 99]
    assert np.allclose(numbers(loss_line), quadratic.losses(LR, EPOCHS)[shown], atol=6e-5, rtol=0)  # 4 decimals
    assert printed_check(printed, "falls_every_epoch")[1] == "True"
    assert printed_check(printed, "(w.requires_grad, g.requires_grad, g.grad_fn)")[1] == "(False, False, None)"


# -- [2] the trainer's loop ------------------------------------------------------------------------------------

def test_trainer_loop_gives_the_same_losses_as_the_hand_loop(lab, quadratic):
    seen = lab.run(lesson.trainer_loop)
    out = seen.names
    exact = quadratic.losses(LR, EPOCHS)
    assert len(out["hand_losses"]) == len(out["trainer_losses"]) == EPOCHS
    assert np.allclose(out["hand_losses"], exact, rtol=1e-4, atol=0)
    assert np.allclose(out["trainer_losses"], exact, rtol=1e-4, atol=0)
    # The largest gap as the lesson defines it, from its own two lists (the same Python expression).
    gap = max(abs(a - b) / b for a, b in zip(out["hand_losses"], out["trainer_losses"]))
    assert seen["largest_gap"] == gap and 0 <= gap <= 1e-4
    w_exact = quadratic.w(LR, EPOCHS)
    assert np.allclose(cpu64(seen["w"]), w_exact, rtol=1e-4, atol=1e-5)
    assert np.allclose(cpu64(out["w_trainer"]), w_exact, rtol=1e-4, atol=1e-5)
    # The trainer's w went through autograd, and manual_step zeroed its gradient after each step.
    assert out["w_trainer"].requires_grad and out["w_trainer"].is_leaf
    assert not out["w"].requires_grad
    assert torch.count_nonzero(out["w_trainer"].grad) == 0
    assert np.allclose(cpu64(out["w0"]), quadratic.w0)


def test_trainer_loop_prints_both_columns_and_its_tolerance(quadratic):
    lab = quiet_lab()
    lab.run(lesson.trainer_loop)
    printed = lab.stream.getvalue()
    exact = quadratic.losses(LR, EPOCHS)
    rows = [numbers(line) for line in printed.splitlines() if re.match(r"\s+\d+\s+0\.\d{7}\s+0\.\d{7}$", line)]
    assert [int(row[0]) for row in rows] == [0, 1, 99]
    for epoch, mine, theirs in rows:
        assert mine == pytest.approx(exact[int(epoch)], abs=1e-6)  # 7 decimals, float32
        assert theirs == pytest.approx(exact[int(epoch)], abs=1e-6)
    _, expected, tolerance = printed_check(printed, "largest_gap")
    assert expected == "0.0" and tolerance in ("", "±0.0001 + 1e-05·|expected|")
    _, expected, tolerance = printed_check(printed, "w")
    assert np.allclose(numbers(expected), quadratic.w(LR, EPOCHS).ravel(), rtol=1e-4, atol=1e-5)
    assert tolerance in ("", "±1e-05 + 0.0001·|expected|")


# -- [3] where it goes --------------------------------------------------------------------------------------

def test_where_it_goes_is_short_of_the_least_squares_optimum(lab, quadratic):
    seen = lab.run(lesson.where_it_goes)
    out = seen.names
    assert np.allclose(cpu64(out["w_star"]), quadratic.w_star, rtol=1e-9, atol=1e-12)
    assert out["loss_star"] == pytest.approx(quadratic.loss_star, rel=1e-9)
    loss_end = quadratic.losses(LR, EPOCHS + 1)[-1]  # after 100 steps
    assert out["loss_end"] == pytest.approx(loss_end, rel=1e-4)
    # Short of the optimum by ~12% of it: far more than float32 rounding.
    assert loss_end - quadratic.loss_star > 0.1 * quadratic.loss_star and seen["loss_end > loss_star"] is True
    assert np.allclose(cpu64(out["eigenvalues"]), quadratic.eigenvalues, rtol=1e-9)
    ratio = cpu64(seen["(error_end / error_start).flatten()"])
    assert ratio.shape == (3,)
    predicted = (1 - LR * quadratic.eigenvalues) ** EPOCHS
    assert np.allclose(ratio, predicted, rtol=1e-3, atol=1e-4)
    assert ratio[0] == pytest.approx(0.7059, abs=1e-4)  # the λmin direction keeps 71%, as the why says
    assert np.allclose(cpu64(out["w"]), quadratic.w(LR, EPOCHS), rtol=1e-4, atol=1e-5)
    assert out["lam_min"] == pytest.approx(quadratic.eigenvalues[0], rel=1e-9)


def test_where_it_goes_prints_the_optimum_and_the_slow_direction(quadratic):
    lab = quiet_lab()
    lab.run(lesson.where_it_goes)
    printed = lab.stream.getvalue()
    note = next(line for line in printed.splitlines() if "at the optimum w*" in line)
    end, star = numbers(note.split("epochs", 1)[1])
    assert end == pytest.approx(quadratic.losses(LR, EPOCHS + 1)[-1], abs=6e-6)  # 5 decimals
    assert star == pytest.approx(quadratic.loss_star, abs=6e-6)
    assert f"loss after {EPOCHS} epochs" in note
    lam_note = next(line for line in printed.splitlines() if line.strip().startswith("λ = "))
    *lams, lr, percent, epochs = numbers(lam_note.split("λ = ", 1)[1])
    assert percent == 1 and "to 1% takes" in lam_note
    assert np.allclose(lams, quadratic.eigenvalues, atol=6e-5) and lr == LR
    # (1 − lr·λmin)^k ≤ 0.01 first at k = ceil(ln 0.01 / ln(1 − lr·λmin)) (1322.4 here: no rounding edge)
    assert epochs == math.ceil(math.log(0.01) / math.log(1 - LR * quadratic.eigenvalues[0]))
    _, expected, _ = printed_check(printed, "(error_end / error_start).flatten()")
    assert np.allclose(numbers(expected), (1 - LR * quadratic.eigenvalues) ** EPOCHS, rtol=1e-5, atol=1e-9)
    assert printed_check(printed, "loss_end > loss_star")[1] == "True"


# -- [4] the step size ----------------------------------------------------------------------------------------

def test_step_size_converges_below_and_diverges_above_two_over_lambda_max(lab, quadratic):
    seen = lab.run(lesson.step_size)
    out = seen.names
    lam_max = quadratic.eigenvalues[-1]
    assert np.allclose(cpu64(out["hessian"]), quadratic.hessian, rtol=1e-5, atol=1e-7)
    assert np.allclose(cpu64(out["eigenvalues"]), quadratic.eigenvalues, rtol=1e-5)
    assert out["lam_max"] == pytest.approx(lam_max, rel=1e-5)
    assert out["below"] == pytest.approx(1.9 / lam_max, rel=1e-5)
    assert out["above"] == pytest.approx(2.2 / lam_max, rel=1e-5)
    assert out["below"] < 2 / lam_max < out["above"]
    below, above = out["losses"][out["below"]], out["losses"][out["above"]]
    assert len(below) == len(above) == 50
    # The closed form at the lesson's own step sizes (its float32 λmax is good to ~1e-7, but 1.2^98
    # would enlarge that); float32 losses are good to ~1e-5 after 50 steps.
    exact_below, exact_above = quadratic.losses(out["below"], 50), quadratic.losses(out["above"], 50)
    assert np.allclose(below, exact_below, rtol=1e-4, atol=0)
    assert np.allclose(above, exact_above, rtol=1e-3, atol=0)
    assert np.all(np.diff(exact_below) < 0) and seen["falls_every_epoch"] is True
    assert -np.diff(exact_below).max() > 1e-6  # each fall is far above float32 rounding of a loss near 0.01
    assert exact_above[-1] > 1e6 * exact_above[0]  # it diverges
    # The growth per epoch: (1 − lr·λmax)² = (1 − 2.2)² = 1.44 at lr = 2.2/λmax.
    assert seen["growth_per_epoch"] == pytest.approx((1 - 2.2) ** 2, rel=1e-4)
    assert seen["growth_per_epoch"] == pytest.approx(exact_above[-1] / exact_above[-2], rel=1e-4)
    # What the comment says: the rest of the loss (L* and the other directions) is ~1e-9 of it by now.
    top = quadratic.eigenvalues[-1] / 2 * quadratic.c[-1, 0] ** 2 * (1 - out["above"] * lam_max) ** (2 * 48)
    assert (exact_above[-2] - top) / exact_above[-2] < 1e-8


def test_step_size_prints_the_limit_and_the_predicted_growth(quadratic):
    lab = quiet_lab()
    lab.run(lesson.step_size)
    printed = lab.stream.getvalue()
    lam_max = quadratic.eigenvalues[-1]
    note = next(line for line in printed.splitlines() if "so the limit is" in line)
    assert np.allclose(numbers(note.replace("2/λmax", "")), [lam_max, 2 / lam_max], atol=6e-5)
    runs = [numbers(line.split("lr ", 1)[1]) for line in printed.splitlines() if line.strip().startswith("lr ")]
    assert len(runs) == 2
    for (lr, first, last), factor in zip(runs, (1.9, 2.2)):
        exact = quadratic.losses(factor / lam_max, 50)
        assert lr == pytest.approx(factor / lam_max, abs=6e-5)
        assert first == pytest.approx(exact[0], abs=6e-5)
        assert last == pytest.approx(exact[-1], rel=1e-3, abs=6e-7)
    observed, expected, _ = printed_check(printed, "growth_per_epoch")
    assert float(expected) == pytest.approx(1.44) and float(observed) == pytest.approx(1.44, rel=1e-4)
    assert printed_check(printed, "falls_every_epoch")[1] == "True"


# -- the lesson as a whole -------------------------------------------------------------------------------------

def test_the_observations_print_their_own_code():
    lab = quiet_lab()
    lab.run(lesson.by_hand)
    printed = lab.stream.getvalue()
    for line in ("g = 2 * phi.T @ residual / n  # the gradient, by hand", "w -= lr * g",
                 "residual = phi @ w - y", "w = w0.clone()  # a plain tensor: requires_grad is False"):
        assert f"\n    {line}" in printed or f"\n        {line}" in printed, line
    assert "lab.check" not in printed and "backward" not in printed


def test_the_numbers_in_the_prose_are_the_oracles(quadratic):
    """The figures the titles, whys and Try lines state in words, each from the oracle."""
    lab = quiet_lab()
    for observation in (lesson.by_hand, lesson.where_it_goes, lesson.step_size):
        lab.run(observation)
    printed = lab.stream.getvalue()
    lam_min, lam_max = quadratic.eigenvalues[0], quadratic.eigenvalues[-1]
    assert f"lr 0.1 is far below the limit 2/λmax ≈ {2 / lam_max:.1f} of [4]" in printed
    assert f"the λmin direction keeps {100 * (1 - LR * lam_min) ** EPOCHS:.0f}%" in printed
    out = lab.run(lesson.step_size).names
    below, above = (round(out[name] * lam_max / 2, 2) for name in ("below", "above"))  # × the limit
    assert f"Step sizes {below:g} and {above:g} times 2/λmax, 50 epochs each" in lab.stream.getvalue()
    factor = abs(1 - 2.2)  # |1 − lr·λmax| at lr = 2.2/λmax
    assert f"(1 − lr·λmax)² = {factor:.1f}² = {factor**2:.2f}" in printed
    assert f"grows {factor:.1f}-fold a step" in printed
    # The Try that steps just above the limit: its factor of the limit and its growth per step.
    just_above = next(t for t in lesson.TRIES if t.where is lesson.step_size)
    old, new = just_above.edit
    assert (old, new) == ("1.9 / lam_max", "2.04 / lam_max")
    scale = float(new.split("/")[0])
    assert f"{scale / 2:g} times 2/λmax" in just_above.then
    assert f"|1 − {scale:g}| = {abs(1 - scale):g} a step" in just_above.then
    exact = quadratic.losses(scale / lam_max, 50)
    assert np.any(np.diff(exact) > 0)  # "the loss stops falling": the check it names fails
