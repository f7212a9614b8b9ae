"""Tensor Feature Trainer: linear regression on polynomial features, the seed's loop.

    python -m tensor_features.train                 # the seed: manual update vs torch.optim.SGD
    python -m tensor_features.train --sweep         # feature dimension vs convergence speed
    python -m tensor_features.train --no-zero-grad  # forget w.grad.zero_()
    python -m tensor_features.train --outside-no-grad
    python -m tensor_features.train --basis legendre --lr auto --plot plots
    python -m tensor_features.train --n 4194304 --fast   # same loop, loss compiled: see README 성능

The data are y = x² + noise on [-1, 1]; the model is pred = Φ w with Φ = [x, x², x³]. The
loss is a quadratic in w, so its exact minimum is one least-squares solve away: every run
is compared with it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tensor_features.config import TrainConfig, build_parser, config_from_args
from tensor_features.load_data import load_data
from tensor_features.cli import device_or_exit
from tensor_features.utils import feature_map, legendre_feature_map, stderr_line


# -- the model's pieces ---------------------------------------------------------------------

def make_features(x: torch.Tensor, degree: int, basis: str = "monomial") -> torch.Tensor:
    """Φ for a fixed basis (the MLP's features are learned, see fit_mlp)."""
    if basis == "legendre":
        return legendre_feature_map(x, degree)
    return feature_map(x, degree)


def mse(phi: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pred = phi @ w
    return ((pred - y) ** 2).mean()


def manual_step(phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float,
                zero_grad: bool = True) -> float:
    """One epoch of the seed's loop. Returns the loss before the update."""
    pred = phi @ w
    loss = ((pred - y) ** 2).mean()

    loss.backward()

    # Wrap in torch.no_grad(): w requires grad, but the update itself must not be recorded.
    with torch.no_grad():
        w -= lr * w.grad
        if zero_grad:
            w.grad.zero_()  # without this, next epoch's backward adds to this gradient
    return loss.item()


def sgd_step(phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor, optimizer: torch.optim.Optimizer,
             zero_grad: bool = True) -> float:
    """One epoch with torch.optim.SGD: zero_grad(), backward(), step()."""
    if zero_grad:
        optimizer.zero_grad()
    loss = ((phi @ w - y) ** 2).mean()
    loss.backward()
    optimizer.step()  # w -= lr * w.grad under no_grad, as in manual_step
    return loss.item()


@dataclass
class FitResult:
    update: str
    losses: list[float] = field(default_factory=list)  # loss at each epoch, before its update
    w: torch.Tensor | None = None
    diverged_at: int | None = None  # first epoch whose loss was not finite
    seconds: float = 0.0  # wall time of the whole fit
    first_epoch_seconds: float = 0.0
    compiled_in_first_epoch: bool = False  # the --fast path's first use of torch.compile

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def fit(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int,
        update: str = "manual", zero_grad: bool = True, fast: FastLoss | None = None) -> FitResult:
    """Train w from a copy of w0 with the manual or the SGD update; stop at a non-finite loss.

    With `fast` (see FastLoss), the same updates run on the compiled loss instead of the seed's.
    """
    w = w0.detach().clone().requires_grad_()
    optimizer = torch.optim.SGD([w], lr=lr) if update == "sgd" else None
    result = FitResult(update if fast is None else f"{update} --fast")
    result.compiled_in_first_epoch = fast is not None and fast.needs_compiling
    start = time.perf_counter()
    for epoch in range(epochs):
        if fast is not None:
            loss = fast.sgd_step(w, optimizer, zero_grad) if optimizer else fast.manual_step(w, lr, zero_grad)
        elif update == "sgd":
            loss = sgd_step(phi, y, w, optimizer, zero_grad)
        else:
            loss = manual_step(phi, y, w, lr, zero_grad)
        if not math.isfinite(loss):
            result.diverged_at = epoch
            break
        result.losses.append(loss)
        if epoch == 0:
            result.first_epoch_seconds = time.perf_counter() - start
    result.seconds = time.perf_counter() - start
    result.w = w.detach()
    return result


# -- the fast path (--fast): same loss, same autograd gradient, fewer passes over memory --------

def rows_loss(w: torch.Tensor, phi_rows: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
    """The seed's loss mean((Φw - y)²), with Φ stored as d rows of n values.

    Φw is written as the sum of rows w_k Φ_k: elementwise work that torch.compile fuses, so
    the forward becomes one pass over Φ and y, and the backward that autograd derives from it
    (2/n Σ_i r_i Φ_ki for every k) another single pass. The seed's `phi @ w` with Φ as n rows
    of 3 is a skinny matrix product that neither BLAS nor the compiler fuses with the rest.
    """
    prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0]))
    return ((prediction - y_flat) ** 2).mean()


class FastLoss:
    """The --fast path: rows_loss over Φ stored feature by feature, compiled with torch.compile.

    The update lines are the seed's; only the loss changed form. The gradient still comes from
    autograd: AOTAutograd traces rows_loss's backward and the compiler emits code for both.
    The first epoch compiles (seconds); fit records how long it took.
    """

    def __init__(self, phi: torch.Tensor, y: torch.Tensor, compile: bool = True):
        self.phi_rows = phi.detach().T.contiguous()  # no copy when Φ is already stored row by row
        self.y_flat = y.detach().reshape(-1)
        self.loss_fn = torch.compile(rows_loss, dynamic=False) if compile else rows_loss
        self.needs_compiling = compile  # until the first step has run
        # Inductor's C++ toolchain check logs that no CUDA runtime exists, even for CPU-only code.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    def manual_step(self, w: torch.Tensor, lr: float, zero_grad: bool = True) -> float:
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        with torch.no_grad():  # the seed's update, as in manual_step
            w -= lr * w.grad
            if zero_grad:
                w.grad.zero_()
        self.needs_compiling = False
        return loss.item()

    def sgd_step(self, w: torch.Tensor, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> float:
        if zero_grad:
            optimizer.zero_grad()
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        optimizer.step()
        self.needs_compiling = False
        return loss.item()


def rows_layout(phi: torch.Tensor) -> torch.Tensor:
    """The same n×d matrix Φ, stored feature by feature: a (d, n) tensor seen through .T."""
    return phi.T.contiguous().T


# -- the exact answer and why gradient descent is slow ------------------------------------

@dataclass
class Optimum:
    w: torch.Tensor
    loss: float
    hessian_eigenvalues: torch.Tensor  # of ∇²L = 2 ΦᵀΦ / n, ascending

    @property
    def condition_number(self) -> float:
        return (self.hessian_eigenvalues[-1] / self.hessian_eigenvalues[0]).item()

    @property
    def max_stable_lr(self) -> float:
        """Gradient descent on a quadratic converges iff lr < 2 / λmax(Hessian)."""
        return 2.0 / self.hessian_eigenvalues[-1].item()

    @property
    def best_lr(self) -> float:
        """The fixed step 2 / (λmax + λmin) that minimises the worst-case contraction."""
        return 2.0 / (self.hessian_eigenvalues[-1] + self.hessian_eigenvalues[0]).item()

    def contraction(self, lr: float) -> float:
        """Per-epoch factor of ‖w - w*‖ in the worst direction: max |1 - lr λ|."""
        return (1 - lr * self.hessian_eigenvalues).abs().max().item()


def least_squares_optimum(phi: torch.Tensor, y: torch.Tensor, rows_per_chunk: int = 2**16) -> Optimum:
    """The closed-form minimiser of mean((Φw - y)²) from the normal equations ΦᵀΦ w = Φᵀy.

    The d×d Gram matrix ΦᵀΦ is also the Hessian (up to 2/n), so one pass gives both the
    answer and the spectrum that explains gradient descent's speed. It is summed in float64
    a chunk of rows at a time: no float64 copy of Φ (at n = 2**22 that copy alone would be
    96 MB, and torch.linalg.lstsq would copy it once more).
    """
    d = phi.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=phi.device)
    rhs = torch.zeros(d, 1, dtype=torch.float64, device=phi.device)
    chunks = list(zip(phi.detach().split(rows_per_chunk), y.detach().split(rows_per_chunk)))
    for phi_rows, y_rows in chunks:
        phi64, y64 = phi_rows.double(), y_rows.double()
        gram += phi64.T @ phi64
        rhs += phi64.T @ y64
    w = torch.linalg.solve(gram, rhs)
    squared_error = sum((((p.double() @ w) - t.double()) ** 2).sum() for p, t in chunks)
    loss = (squared_error / phi.shape[0]).item()
    hessian = 2 * gram / phi.shape[0]
    return Optimum(w.cpu(), loss, torch.linalg.eigvalsh(hessian).cpu())


def epochs_to_within(losses: list[float], target: float, tolerance: float = 0.01) -> int | None:
    """First epoch whose loss is within `tolerance` (relative) of target, or None."""
    for epoch, loss in enumerate(losses):
        if loss <= target * (1 + tolerance):
            return epoch
    return None


def resolve_lr(lr: float | str, optimum: Optimum) -> float:
    return optimum.best_lr if lr == "auto" else float(lr)


# -- inference, separated from training -----------------------------------------------------

def predict(features, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Predictions for new x with autograd off: no graph, no saved tensors, inference tensors out."""
    with torch.inference_mode():
        return features(x) @ w


# -- the learned extractor ------------------------------------------------------------------

class MLPFeatures(torch.nn.Module):
    """A small MLP whose last hidden layer is the feature map Φ(x) of width `degree`."""

    def __init__(self, degree: int, hidden: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, degree), torch.nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def fit_mlp(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int,
            seed: int) -> tuple[FitResult, MLPFeatures]:
    """Train the extractor and the linear head together, end to end, with SGD."""
    torch.manual_seed(seed)
    extractor = MLPFeatures(w0.shape[0]).to(x.device)
    w = w0.detach().clone().requires_grad_()
    optimizer = torch.optim.SGD([w, *extractor.parameters()], lr=lr)
    result = FitResult("mlp")
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = mse(extractor(x), w, y)  # the gradient flows into w and through Φ into the MLP
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            result.diverged_at = epoch
            break
        result.losses.append(loss.item())
    result.w = w.detach()
    return result, extractor


# -- observation point: the update outside no_grad ----------------------------------------

def update_outside_no_grad(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float) -> list[str]:
    """Run the seed's update without torch.no_grad(), both ways it is usually written."""
    report = []
    w = w0.detach().clone().requires_grad_()
    loss = ((phi @ w - y) ** 2).mean()
    loss.backward()
    try:
        w -= lr * w.grad  # in place, recorded by autograd: refused for a leaf
        report.append("in place:  no error (unexpected)")
    except RuntimeError as err:
        report.append(f"in place:  w -= lr * w.grad raises RuntimeError: {err}")
        report.append("           autograd would have to record a change of the very leaf the graph starts from.")

    w = w0.detach().clone().requires_grad_()
    for epoch in range(2):
        loss = ((phi @ w - y) ** 2).mean()
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the non-leaf .grad warning; we report it ourselves
            grad = w.grad
        if grad is None:
            report.append(f"rebinding: epoch {epoch}: w.grad is None: w is no longer a leaf "
                          f"(is_leaf={w.is_leaf}, grad_fn={type(w.grad_fn).__name__}); training stops here.")
            break
        w = w - lr * grad  # recorded: the new w is an output of SubBackward0, not a leaf
        report.append(f"rebinding: epoch {epoch}: loss {loss.item():.4f}; w = w - lr * w.grad "
                      f"gives is_leaf={w.is_leaf}, and the graph now reaches back through every update")
    return report


# -- observation point: feature dimension vs convergence -------------------------------------

@dataclass
class SweepRow:
    degree: int
    final_loss: float | None
    optimum_loss: float
    epochs_to_1pct: int | None
    condition_number: float
    max_stable_lr: float
    diverged_at: int | None


def degree_sweep(config: TrainConfig, x: torch.Tensor, y: torch.Tensor, degrees=range(1, 7)) -> list[SweepRow]:
    rows = []
    for degree in degrees:
        phi = make_features(x, degree, "legendre" if config.basis == "legendre" else "monomial")
        optimum = least_squares_optimum(phi, y)
        lr = resolve_lr(config.lr, optimum)
        w0 = initial_weights(degree, config.seed, x.device)
        result = fit(phi, y, w0, lr, config.epochs)
        rows.append(SweepRow(degree, result.final_loss if result.losses else None, optimum.loss,
                             epochs_to_within(result.losses, optimum.loss), optimum.condition_number,
                             optimum.max_stable_lr, result.diverged_at))
    return rows


def initial_weights(degree: int, seed: int, device: torch.device) -> torch.Tensor:
    """w ~ N(0, 1) of shape (degree, 1), as in the seed, from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(degree, 1, generator=generator).to(device)


# -- printing ---------------------------------------------------------------------------------

def name(result: FitResult) -> str:
    return f"{result.update:>13}" if result.update.endswith("--fast") else f"{result.update:>6}"


def describe_fit(result: FitResult, optimum: Optimum) -> str:
    if result.diverged_at is not None:
        return f"{name(result)}: diverged at epoch {result.diverged_at} (the loss stopped being a finite number)"
    gap = result.final_loss - optimum.loss
    within = epochs_to_within(result.losses, optimum.loss)
    reached = f"within 1% of it from epoch {within}" if within is not None else \
        f"not within 1% of it in {len(result.losses)} epochs"
    return (f"{name(result)}: final loss {result.final_loss:.6f}, {gap:+.6f} above the optimum, {reached}")


def describe_time(result: FitResult) -> str:
    epochs = len(result.losses)
    if epochs < 2:
        return f"{name(result)}: {epochs} epoch in {result.seconds:.3f} s"
    rest = (result.seconds - result.first_epoch_seconds) / (epochs - 1)
    return (f"{name(result)}: {epochs} epochs in {result.seconds:.3f} s: the first {result.first_epoch_seconds:.3f} s"
            f"{' (torch.compile compiling)' if result.compiled_in_first_epoch else ''}, "
            f"then {rest * 1e3:.3f} ms/epoch")


def print_logs(results: list[FitResult], log_every: int, epochs: int) -> None:
    names = "   |   ".join(f"{r.update:<22}" for r in results)
    print(f"  {names}")
    for epoch in range(0, epochs, log_every):
        cells = []
        for r in results:
            cells.append(f"Epoch {epoch}, Loss {r.losses[epoch]:.4f}" if epoch < len(r.losses) else "(stopped)")
        print("  " + "   |   ".join(f"{c:<22}" for c in cells))


def compare_updates(manual: FitResult, sgd: FitResult, device: torch.device) -> None:
    """Manual and SGD run the same arithmetic; say how far apart they ended."""
    steps = min(len(manual.losses), len(sgd.losses))
    loss_gap = max((abs(a - b) for a, b in zip(manual.losses[:steps], sgd.losses[:steps])), default=0.0)
    w_gap = (manual.w - sgd.w).abs().max().item()
    print(f"  largest |loss_manual - loss_sgd| over {steps} epochs: {loss_gap:.3g};  "
          f"max |w_manual - w_sgd|: {w_gap:.3g}")
    if loss_gap == 0 and w_gap == 0:
        print("  identical: SGD without momentum or weight decay is the same update under no_grad.")
    else:
        print("  not bit-identical: SGD computes w.add_(w.grad, alpha=-lr), one rounding per element; the seed's\n"
              "  w -= lr * w.grad rounds lr * w.grad first, then subtracts. The last bit differs now and then\n"
              "  and the trajectories drift apart by float32 rounding, no more.")


# -- the command line -------------------------------------------------------------------------

def run(config: TrainConfig, device: torch.device) -> dict:
    x, y = load_data(config.n, config.noise, config.seed, device)
    print(f"tensor_features.train   torch {torch.__version__} · device {device} · n={config.n} "
          f"noise={config.noise} degree={config.degree} basis={config.basis} seed={config.seed}")
    basis = "monomial" if config.basis == "mlp" else config.basis
    phi = make_features(x, config.degree, basis)
    if config.fast:
        phi = rows_layout(phi)  # same Φ, stored feature by feature for FastLoss (no second copy)
    optimum = least_squares_optimum(phi, y)
    lr = resolve_lr(config.lr, optimum)
    w0 = initial_weights(config.degree, config.seed, device)
    outputs: dict = {"optimum": optimum, "lr": lr, "x": x, "y": y}

    print(f"lr = {lr:.6g}{' (auto: 2/(λmax+λmin) of the Hessian)' if config.lr == 'auto' else ''}; "
          f"largest stable lr 2/λmax = {optimum.max_stable_lr:.4g}; Hessian condition number "
          f"{optimum.condition_number:.4g}")
    print(f"least squares (normal equations ΦᵀΦ w = Φᵀy in float64): loss {optimum.loss:.6f}, "
          f"w* = {[round(v, 4) for v in optimum.w.flatten().tolist()]}")

    if config.outside_no_grad:
        print("\nUpdating outside torch.no_grad():")
        for line in update_outside_no_grad(phi, y, w0, lr):
            print("  " + line)
        return outputs

    zero_grad = not config.no_zero_grad
    updates = ["manual", "sgd"] if config.update == "both" else [config.update]
    fast = FastLoss(phi, y) if config.fast else None
    results = [fit(phi, y, w0, lr, config.epochs, update, zero_grad, fast) for update in updates]
    if config.basis == "mlp":
        mlp_result, extractor = fit_mlp(x, y, w0, lr, config.epochs, config.seed)
        results.append(mlp_result)
        outputs["extractor"] = extractor
    outputs["results"] = {r.update: r for r in results}

    title = "without w.grad.zero_(): gradients accumulate" if config.no_zero_grad else "training"
    print(f"\n{title} ({config.epochs} epochs, log every {config.log_every}):")
    print_logs(results, config.log_every, config.epochs)
    print()
    for result in results:
        print(describe_fit(result, optimum))
    for result in results:
        print(describe_time(result))
    if len(updates) == 2:
        compare_updates(results[0], results[1], device)
    if config.basis == "mlp":
        print("  the mlp row learns its own 'degree'-wide features; its optimum is not the monomials' one,")
        print("  so compare its final loss, not its gap.")
    if not config.no_zero_grad and results[0].diverged_at is None:
        print(f"\nconvergence: per epoch the slowest direction of w - w* shrinks by max|1 - lr·λ| = "
              f"{optimum.contraction(lr):.4f} (Hessian condition number κ = {optimum.condition_number:.1f}).")
        if epochs_to_within(results[0].losses, optimum.loss) is None:
            print("  lr must stay below 2/λmax for the steep direction, so the flat one (λmin) crawls."
                  "\n  Try --lr auto, --basis legendre, more --epochs, or --sweep.")

    fitted = results[0]
    if fitted.diverged_at is None and config.basis != "mlp":
        x_new = torch.linspace(-1, 1, 201, device=device).unsqueeze(1)  # new inputs, 0.01 apart
        prediction = predict(lambda inputs: make_features(inputs, config.degree, basis), fitted.w, x_new)
        outputs["x_new"], outputs["prediction"] = x_new, prediction
        print(f"predict() under inference_mode: is_inference={prediction.is_inference()}, "
              f"requires_grad={prediction.requires_grad}, fit at x=0.5: {prediction[150].item():.4f}"
              f" (true curve 0.25)")

    if config.sweep:
        print("\nfeature dimension vs convergence (same lr, epochs and seed; manual update):")
        print(f"  {'D':>2}  {'final loss':>10}  {'optimum':>8}  {'epochs to 1%':>14}  {'cond(ΦᵀΦ/n)':>12}  {'2/λmax':>8}")
        rows = degree_sweep(config, x, y)
        for row in rows:
            final = f"{row.final_loss:.4f}" if row.diverged_at is None else f"div@{row.diverged_at}"
            reached = str(row.epochs_to_1pct) if row.epochs_to_1pct is not None else f"> {config.epochs}"
            print(f"  {row.degree:>2}  {final:>10}  {row.optimum_loss:>8.4f}  {reached:>14}  "
                  f"{row.condition_number:>12.4g}  {row.max_stable_lr:>8.4g}")
        print("  higher degree: the columns look more alike on [-1, 1], the Gram matrix grows ill-conditioned,"
              "\n  so the smallest-curvature direction needs ever more steps at a stable lr.")
        outputs["sweep"] = rows

    if config.plot:
        from tensor_features.plots import write_plots  # matplotlib only when asked for

        for path in write_plots(Path(config.plot), outputs, config):
            print(f"wrote {path}")
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    config = config_from_args(parser.parse_args(argv))
    device = device_or_exit(parser, config.device)
    if config.degree >= config.n:
        parser.error(f"--degree {config.degree} needs more than {config.degree} points (got --n {config.n})")
    if config.plot:
        try:
            Path(config.plot).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            stderr_line(f"{parser.prog}: error: --plot {config.plot}: cannot create the folder ({err.strerror})")
            return 2
    outputs = run(config, device)
    write_verdict(outputs)
    return 0


def write_verdict(outputs: dict) -> None:
    """One line for the `make run` summary (only when LAB_SUMMARY names a file)."""
    import json
    import os

    summary = os.environ.get("LAB_SUMMARY")
    results = outputs.get("results")
    if not summary or not results:
        return
    optimum = outputs["optimum"]
    first = next(iter(results.values()))
    if first.diverged_at is not None:
        verdict = f"{first.update} diverged at epoch {first.diverged_at}"
    else:
        above = 100 * (first.final_loss - optimum.loss) / optimum.loss
        verdict = (f"{first.update}: final loss {first.final_loss:.6f}, {above:.1f}% above the least-squares "
                   f"optimum {optimum.loss:.6f} after {len(first.losses)} epochs")
    with open(summary, "a", encoding="utf-8") as out:
        out.write(json.dumps({"verdict": verdict}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
