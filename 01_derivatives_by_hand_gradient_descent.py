"""01 · gradient descent: the original regression trained with a gradient written by hand.

The previous lesson (01 finite differences) measured the gradient of the original regression's
loss L(w) = mean((Φw − y)²) and checked it against the formula g(w) = 2Φᵀ(Φw − y)/n. Here that
formula trains the model, w -= lr * g, on the trainer's defaults (100 points, features
Φ = [x, x², x³], lr 0.1, 100 epochs), with no autograd anywhere, and its losses are those of the
trainer's own loop, which gets g from loss.backward(). Then where the descent goes (toward the
least-squares optimum, which 100 epochs do not reach, and why) and how large a step may be:
below 2/λmax of the loss's Hessian it converges, above it diverges.

Writing g by hand works for a loss this small. Chapter 02 writes an engine that gets a gradient
from the loss's own code by a backward pass; from chapter 05 on, torch.autograd does it.
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try
from tensor_features.load_data import load_data
from tensor_features.trainer.fitting import manual_step
from tensor_features.trainer.model import initial_weights
from tensor_features.utils import feature_map

lab = Lab.start("01 · gradient descent", __doc__, __name__)


def original_regression(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original regression, as python -m tensor_features.train sets it up by default: the
    features Φ = [x, x², x³] (n×3), the targets y = x² + noise (n×1) and the starting w (3×1),
    all float32."""
    # Both draw on the CPU from seeded generators, then move the numbers to the device passed in,
    # whatever the default device: the same numbers on a machine's CPU and on its GPU.
    x, y = load_data(n=100, noise=0.1, seed=0, device=device)
    return feature_map(x), y, initial_weights(3, seed=0, device=device)


# %% [1] Gradient descent, by hand
# The loss is L(w) = mean((Φw − y)²) and its gradient, written by hand, g = 2Φᵀ(Φw − y)/n. Each
# epoch records the loss and takes one step against the gradient, w -= lr * g: the trainer's
# update, with g from the formula instead of a backward pass. No tensor here asks for a gradient
# (requires_grad stays False; requires_grad=True is how a tensor asks PyTorch's autograd to record
# the operations on it, chapters 02 and 05), so autograd records nothing: no graph, no .grad,
# nothing to zero between epochs. At this small step every epoch lowers the loss ([4] says how small
# is small).
def by_hand(lab: Lab) -> None:
    """The original regression, lr 0.1, 100 epochs: w -= lr * g with g = 2Φᵀ(Φw − y)/n"""
    phi, y, w0 = original_regression(lab.device)
    n = phi.shape[0]
    lr, epochs = 0.1, 100
    w = w0.clone()  # a plain tensor: requires_grad is False
    losses = []
    for epoch in range(epochs):
        residual = phi @ w - y
        losses.append((residual**2).mean().item())  # the loss before this epoch's step
        g = 2 * phi.T @ residual / n  # the gradient, by hand
        w -= lr * g
    lab.note("epoch  " + "  ".join(f"{epoch:>7}" for epoch in range(0, epochs, 20))
             + f"  {epochs - 1:>7}\nloss   "
             + "  ".join(f"{loss:7.4f}" for loss in losses[::20]) + f"  {losses[-1]:7.4f}")
    lab.check((w.requires_grad, g.requires_grad, g.grad_fn), (False, False, None),
              "no tensor asked for a gradient, so autograd recorded no graph: g is the formula's")
    falls_every_epoch = all(later < earlier for earlier, later in zip(losses, losses[1:]))
    lab.check(falls_every_epoch, True,
              "lr 0.1 is far below the limit 2/λmax ≈ 2.1 of [4]: every step lowers L")


lab.run(by_hand)


# %% [2] The trainer's loop gets the same losses from autograd
# The trainer's manual loop (tensor_features.trainer.fitting.manual_step) computes the same loss,
# then loss.backward() fills w.grad, and w -= lr * w.grad runs under torch.no_grad(), followed
# by w.grad.zero_() (backward adds into .grad: 05 accumulation). Run beside the hand loop, on the
# same data, lr and starting w, it gives the same losses, though not necessarily bit for bit:
# autograd gets the gradient through other operations, in another order, than the formula, so
# the two may round differently and the runs drift apart by float32 rounding. The check allows for
# it, with a bound that holds on every machine.
def trainer_loop(lab: Lab) -> None:
    """The same descent by the trainer's manual loop, which gets g from loss.backward()"""
    phi, y, w0 = original_regression(lab.device)
    n = phi.shape[0]
    lr, epochs = 0.1, 100
    w = w0.clone()
    w_trainer = w0.clone().requires_grad_()  # autograd records what is computed from w_trainer
    hand_losses, trainer_losses = [], []
    for epoch in range(epochs):
        residual = phi @ w - y
        hand_losses.append((residual**2).mean().item())
        w -= lr * (2 * phi.T @ residual / n)
        trainer_losses.append(manual_step(phi, y, w_trainer, lr))  # loss.backward() inside
    lab.note("epoch   by hand     trainer's loop\n" + "\n".join(
        f"{epoch:>5}   {hand_losses[epoch]:.7f}   {trainer_losses[epoch]:.7f}"
        for epoch in (0, 1, 99)))
    largest_gap = max(abs(mine - theirs) / theirs
                      for mine, theirs in zip(hand_losses, trainer_losses))
    # 1e-4, a bound for every CPU: the two gradients differ by a few float32 roundings of
    # Σ|Φ||r| (~1e-7 of it); no step enlarges a difference (every |1 − lr·λ| < 1: [3], [4]), so
    # 100 steps leave w at most ~1e-5 apart; a float32 sum of 100 squares is good to ~6e-6.
    lab.check(largest_gap, 0.0, "the same loss at every epoch, up to float32 rounding",
              atol=1e-4)
    lab.check(w, w_trainer, "the same w after 100 epochs, up to float32 rounding",
              rtol=1e-4, atol=1e-5)


lab.run(trainer_loop)


# %% [3] Where it goes: toward the least-squares optimum, not there yet
# L is a quadratic bowl; its lowest point w* solves the least-squares problem Φw ≈ y, which
# torch.linalg.lstsq solves directly, with no descent (here in float64, exact far below what the
# float32 descent rounds). After 100 epochs the loss is still above L(w*). Why: the gradient is
# zero at w*, Φᵀ(Φw* − y) = 0, so g = 2Φᵀ(Φw − y)/n = 2Φᵀ(Φw − Φw*)/n = H (w − w*) with
# H = 2ΦᵀΦ/n, the loss's Hessian (the matrix of its second derivatives, the same at every w for a
# quadratic). So each step maps the error e = w − w* to e − lr·H e = (I − lr·H) e. Along each
# eigenvector of H (H v = λ v), e is multiplied by 1 − lr·λ per step, exactly: after 100 steps by
# (1 − lr·λ)^100. The smallest λ is slow.
def where_it_goes(lab: Lab) -> None:
    """After 100 epochs at lr 0.1: short of the optimum, by (1 − lr·λ)^100 in each direction"""
    phi, y, w0 = original_regression(lab.device)
    n = phi.shape[0]
    lr, epochs = 0.1, 100
    w = w0.clone()
    for epoch in range(epochs):
        w -= lr * (2 * phi.T @ (phi @ w - y) / n)  # the descent of [1], in one line
    phi64, y64 = phi.double(), y.double()
    w_star = torch.linalg.lstsq(phi64, y64).solution  # the exact minimiser, without descent
    loss_star = ((phi64 @ w_star - y64) ** 2).mean().item()
    loss_end = ((phi @ w - y) ** 2).mean().item()
    lab.note(f"loss after {epochs} epochs {loss_end:.5f}, at the optimum w* {loss_star:.5f}")
    lab.check(loss_end > loss_star, True, "100 epochs at lr 0.1 have not reached the bottom")
    eigenvalues, eigenvectors = torch.linalg.eigh(2 * phi64.T @ phi64 / n)  # H, in float64
    error_start = eigenvectors.T @ (w0.double() - w_star)  # e along each eigenvector of H
    error_end = eigenvectors.T @ (w.double() - w_star)
    # atol 1e-4: the float32 descent ends within ~1e-5 of the exact one (100 steps' rounding),
    # and every starting error it is divided by is at least 0.37 in size. The λmax direction,
    # shrunk to about 5e-5, is below that atol: the check holds it only to within 1e-4.
    lab.check((error_end / error_start).flatten(), (1 - lr * eigenvalues) ** epochs,
              "(1 − lr·λ)^100 per eigen-direction, λ ascending: the λmin direction keeps 71%, "
              "the λmax one almost nothing",
              rtol=1e-3, atol=1e-4)
    lam_min = eigenvalues[0].item()
    lab.note(f"λ = {', '.join(f'{value:.4f}' for value in eigenvalues.tolist())}: at lr {lr}, "
             f"shrinking the λmin direction's error to 1% takes "
             f"{math.ceil(math.log(0.01) / math.log(1 - lr * lam_min))} epochs")


lab.run(where_it_goes)


# %% [4] How large a step: below 2/λmax it converges, above it diverges
# A larger step is faster, up to a limit. Per step, the error along the top eigenvector of H is
# multiplied by 1 − lr·λmax, which stays within (−1, 1) only while lr < 2/λmax. Just below the
# limit every direction shrinks and every epoch lowers the loss; just above it, the error along
# the top eigenvector grows by |1 − lr·λmax| per step and, the other directions having shrunk
# away, the loss (a square) by (1 − lr·λmax)² per epoch. The eigenvalues come from eigvalsh of
# the Hessian 2ΦᵀΦ/n (08 Hessians gets the same matrix from autograd).
def step_size(lab: Lab) -> None:
    """Step sizes 0.95 and 1.1 times 2/λmax, 50 epochs each"""
    phi, y, w0 = original_regression(lab.device)
    n = phi.shape[0]
    hessian = 2 * phi.T @ phi / n  # the same at every w: L is quadratic in w
    eigenvalues = torch.linalg.eigvalsh(hessian)  # ascending
    lam_max = eigenvalues[-1].item()
    lab.note(f"λmax = {lam_max:.4f}, so the limit is 2/λmax = {2 / lam_max:.4f}")
    below, above = 1.9 / lam_max, 2.2 / lam_max
    losses = {below: [], above: []}
    for lr in (below, above):
        w = w0.clone()
        for epoch in range(50):
            residual = phi @ w - y
            losses[lr].append((residual**2).mean().item())
            w -= lr * (2 * phi.T @ residual / n)
    lab.note(f"lr {below:.4f}: loss {losses[below][0]:.4f} -> {losses[below][-1]:.6f}\n"
             f"lr {above:.4f}: loss {losses[above][0]:.4f} -> {losses[above][-1]:.4g}")
    falls_every_epoch = all(b < a for a, b in zip(losses[below], losses[below][1:]))
    lab.check(falls_every_epoch, True,
              "below 2/λmax every |1 − lr·λ| < 1: each direction's error shrinks, so does L")
    growth_per_epoch = losses[above][-1] / losses[above][-2]
    # rtol 1e-4: by now the rest of the loss (L(w*) and the other directions) is ~1e-9 of it;
    # float32's λmax is good to ~1e-6, a float32 sum of 100 squares to ~6e-6.
    lab.check(growth_per_epoch, (1 - above * lam_max) ** 2,
              "(1 − lr·λmax)² = 1.2² = 1.44: the top direction's error grows 1.2-fold a step",
              rtol=1e-4)


lab.run(step_size)


# %% The end
TRIES = [
    Try("the same descent on the GPU; every check holds there too",
        flags="--device cuda", needs_cuda=True),
    Try("without the factor 2 the hand loop takes half steps: its losses part from the trainer's, "
        "so the comparison fails",
        edit=("2 * phi.T @ residual / n", "phi.T @ residual / n"), where=trainer_loop),
    Try("the trainer's loop without w.grad.zero_(): each backward adds to the gradients before "
        "it (05 accumulation), so its losses part from the hand loop's and the comparison fails",
        edit=("manual_step(phi, y, w_trainer, lr)",
              "manual_step(phi, y, w_trainer, lr, zero_grad=False)"), where=trainer_loop),
    Try("a step just above the limit, 1.02 times 2/λmax: the top direction's error grows by "
        "|1 − 2.04| = 1.04 a step, so the loss stops falling and that check fails",
        edit=("1.9 / lam_max", "2.04 / lam_max"), where=step_size),
]
lab.finish(TRIES)
