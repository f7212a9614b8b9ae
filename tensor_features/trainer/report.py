"""The trainer's report: a RunResult (experiment.py) in words, and `make run`'s one-line verdict.

Nothing here computes a figure the run did not: every number printed is a field of the result,
or arithmetic on the Hessian's eigenvalues that the line itself explains. The words that differ
between losses come from the loss registry (losses.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

import torch

from tensor_features.config import TrainConfig
from tensor_features.trainer.experiment import RunResult, within_epoch
from tensor_features.trainer.fast import REFERENCE_EPOCHS, payoff_epochs
from tensor_features.trainer.fitting import FitResult
from tensor_features.trainer.losses import Loss
from tensor_features.trainer.model import Optimum
from tensor_features.trainer.observations import BatchNormTrap, CreateGraphCheck, OutsideNoGrad, SweepRow

if TYPE_CHECKING:  # the type only: a single-process run never imports the distributed plumbing
    from tensor_features.trainer.data_parallel import DataParallel


def _num(value: float, digits: int = 6) -> str:
    """A loss or a prediction: fixed-point while it is small, scientific once it has blown up."""
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"


def _vector(t: torch.Tensor, digits: int = 4) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in t.flatten().tolist()) + "]"


def _small(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in t.flatten().tolist()) + "]"


def name(result: FitResult) -> str:
    return f"{result.update:>13}" if result.update.endswith("--fast") else f"{result.update:>6}"


def gap_text(loss: float, optimum: float) -> str:
    """How far a float32 training loss is from the float64 optimum, signed honestly."""
    gap = loss - optimum
    if gap >= 0:
        return f"{_num(gap) if gap >= 1e-4 else f'{gap:.2g}'} above the optimum"
    return f"{-gap:.2g} below the float64 optimum (the training loss is float32 arithmetic)"


def closeness(optimum: Optimum) -> str:
    """What "within" means for this optimum: 1% of it, or the tolerance eps32 · mean(target²) where
    that is larger (with --noise 0 the optimum is 0, and 1% of 0 would ask for exactly 0)."""
    if optimum.resolution > 0.01 * optimum.loss:
        return f"{optimum.resolution:.2g} (a tolerance: float32 eps × the mean squared target)"
    return "1%"


DIVERGED = ("its float32 loss stopped being finite (float32 ends at 3.4e38: a residual's square past it is inf, "
            "and so is mean() of finite squares once their sum passes it)")


def last_loss(result: FitResult) -> str:
    """The last logged loss, named as what it is: the loss of w before the last epoch's update."""
    return f"last loss {_num(result.final_loss)} (epoch {len(result.losses) - 1}, before its update)"


def describe_fit(result: FitResult, optimum: Optimum, lr: float) -> str:
    if result.diverged_at is not None:
        return (f"{name(result)}: diverged at epoch {result.diverged_at}: {DIVERGED} "
                f"(lr {lr:.4g}, 2/λmax = {optimum.max_stable_lr:.4g})")
    within, close = within_epoch(result.losses, optimum), closeness(optimum)
    reached = f"within {close} of it from epoch {within}" if within is not None else \
        f"not within {close} of it in {len(result.losses)} epoch{'s' if len(result.losses) != 1 else ''}"
    return f"{name(result)}: {last_loss(result)}, {gap_text(result.final_loss, optimum.loss)}, {reached}"


def describe_time(result: FitResult) -> str:
    epochs = result.epochs_run
    if result.epoch_ms is None:
        return f"{name(result)}: {epochs} epoch{'s' if epochs != 1 else ''} in {result.seconds:.3f} s"
    if not result.setup_what:  # the plain loops: the first epoch warms up
        return (f"{name(result)}: {epochs} epochs in {result.seconds:.3f} s: the first {result.setup_seconds:.3f} s, "
                f"then {result.epoch_ms:.3f} ms/epoch")
    return (f"{name(result)}: {epochs} epochs in {result.seconds:.3f} s: setup {result.setup_seconds:.3f} s "
            f"({result.setup_what}), then {result.epoch_ms:.3f} ms/epoch; the losses copied to the host every "
            f"{result.log_every} epochs")


def payoff_line(fitted: FitResult, reference_ms: float) -> str:
    """When --fast has paid for its setup, from the epoch times measured in this run."""
    epochs = payoff_epochs(fitted.setup_seconds, fitted.setup_epochs, fitted.epoch_ms, reference_ms)
    times = (f"{fitted.update} at {fitted.epoch_ms:.3f} ms/epoch, the original loop at {reference_ms:.3f} "
             f"({REFERENCE_EPOCHS} epochs on a copy of w0; one run each, measured here)")
    if epochs is None:
        return f"--fast never pays for its setup ({fitted.setup_seconds:.3f} s) here: its epoch is not faster: {times}"
    return f"--fast pays for its setup ({fitted.setup_seconds:.3f} s) from {epochs} epochs on: {times}"


def convergence_lines(optimum: Optimum, lr: float) -> list[str]:
    """What limits gradient descent at this lr, computed from the Hessian's eigenvalues."""
    eigenvalues = optimum.hessian_eigenvalues
    low, high = eigenvalues[0].item(), eigenvalues[-1].item()
    kappa, rho = optimum.condition_number, optimum.contraction(lr)
    limiting = optimum.limiting_eigenvalue(lr)
    best_rho = (kappa - 1) / (kappa + 1)
    lines = [f"Hessian eigenvalues λmin {low:.4g}, λmax {high:.4g}: condition number κ = {kappa:.4g}"]
    if rho >= 1:
        lines.append(f"lr {lr:.4g} ≥ 2/λmax = {optimum.max_stable_lr:.4g}: the steepest direction of w − w* "
                     f"grows by |1 − lr·λmax| = {rho:.4g} per epoch")
        return lines
    if abs(lr - optimum.best_lr) <= 1e-9 * optimum.best_lr:
        lines.append(f"lr {lr:.4g} = 2/(λmax+λmin), the best fixed step: the flattest and the steepest direction "
                     f"both shrink by |1 − lr·λ| = {rho:.4f} per epoch, = (κ−1)/(κ+1) = {best_rho:.4f}")
        return lines
    if limiting == low:
        lines.append(f"lr {lr:.4g} is {optimum.max_stable_lr / lr:.3g}× below the stability limit 2/λmax = "
                     f"{optimum.max_stable_lr:.4g}; the slowest direction is the flattest one: w − w* shrinks "
                     f"there by 1 − lr·λmin = {rho:.4f} per epoch")
    else:
        lines.append(f"lr {lr:.4g} is above 2/(λmax+λmin) = {optimum.best_lr:.4g}: the steepest direction "
                     f"overshoots and limits, |1 − lr·λmax| = {rho:.4f} per epoch")
    lines.append(f"the best fixed step, 2/(λmax+λmin) = {optimum.best_lr:.4g} (--lr auto), would give "
                 f"ρ = (κ−1)/(κ+1) = {best_rho:.4f}: κ sets that floor for every fixed lr")
    return lines


def accumulation_lines(optimum: Optimum, lr: float, fitted: FitResult) -> list[str]:
    """What the summed gradient does (--no-zero-grad), computed from the Hessian's eigenvalues."""
    steps = lr * optimum.hessian_eigenvalues
    low, high = steps[0].item(), steps[-1].item()
    lines = ["\nwithout zero_(), w.grad is the sum of every gradient so far; per eigen-direction of the Hessian",
             "  e_{k+1} = (2 − lr·λ) e_k − e_{k−1} for e = w − w*: the two roots multiply to 1, and both have",
             "  modulus 1 while 0 < lr·λ < 4."]
    if high < 4:
        lines.append(f"  here lr·λ runs from {low:.4g} to {high:.4g}: every direction oscillates around w* and "
                     "neither settles nor grows.")
    else:
        lines.append(f"  here lr·λmax = {high:.4g} ≥ 4: in that direction one root has modulus > 1 and w − w* grows.")
    if fitted.diverged_at is None and len(fitted.losses) >= 2:
        tail = fitted.losses[len(fitted.losses) // 2:]
        lines.append(f"  {fitted.update}: loss over the last {len(tail)} epochs between {_num(min(tail))} and "
                     f"{_num(max(tail))} (the optimum: {_num(optimum.loss)})")
    return lines


def print_logs(results: list[FitResult], log_every: int, epochs: int, out: TextIO) -> None:
    names = "   |   ".join(f"{r.update:<22}" for r in results)
    print(f"  {names}", file=out)
    for epoch in range(0, epochs, log_every):
        cells = []
        for r in results:
            cells.append(f"Epoch {epoch}, Loss {_num(r.losses[epoch], 4)}" if epoch < len(r.losses) else "(stopped)")
        print("  " + "   |   ".join(f"{c:<22}" for c in cells), file=out)


def compare_updates(manual: FitResult, sgd: FitResult, out: TextIO) -> None:
    """Manual and SGD run the same arithmetic; say how far apart they ended."""
    steps = min(len(manual.losses), len(sgd.losses))
    loss_gap = max((abs(a - b) for a, b in zip(manual.losses[:steps], sgd.losses[:steps])), default=0.0)
    rounding = ("SGD's step is one operation, w.add_(w.grad, alpha=-lr); the original w -= lr * w.grad first\n"
                "  stores lr * w.grad as a float32 tensor, then subtracts, so the last bit can round differently")
    if manual.diverged_at is not None or sgd.diverged_at is not None:
        print(f"  largest |loss_manual - loss_sgd| over the {steps} epochs both logged finite: {loss_gap:.3g} "
              "(the final w are not compared: a run that diverged ends on non-finite numbers)", file=out)
        return
    w_gap = (manual.w - sgd.w).abs().max().item()
    print(f"  largest |loss_manual - loss_sgd| over {steps} epoch{'s' if steps != 1 else ''}: {loss_gap:.3g};  "
          f"max |w_manual - w_sgd| after the last update: {w_gap:.3g}", file=out)
    if loss_gap == 0 and w_gap == 0:
        print(f"  identical in this run: every logged loss and the final w. They need not be: {rounding}.", file=out)
    else:
        print(f"  not bit-identical: {rounding}.", file=out)


def report(result: RunResult, out: TextIO | None = None) -> None:
    """Print a run: the setting, the exact answer, the training, and each observation asked for."""
    out = out or sys.stdout
    config, optimum, lr, loss = result.config, result.optimum, result.lr, result.loss

    def say(text: str = "") -> None:
        print(text, file=out)

    say(f"tensor_features.train   torch {torch.__version__} · device {result.device} · n={config.n} "
        f"noise={config.noise} degree={config.degree} basis={config.basis} loss={config.loss} seed={config.seed}")
    if result.data_parallel is not None:
        say(data_parallel_line(result.data_parallel))
    say(f"loss: {loss.formula}")
    auto = " (auto: 2/(λmax+λmin) of the Hessian)" if config.lr == "auto" else ""
    say(f"lr = {lr:.6g}{auto}; stability limit 2/λmax = {optimum.max_stable_lr:.4g}; "
        f"Hessian condition number {optimum.condition_number:.4g}")
    if loss.uses_derivative:
        symbol = loss.symbol
        say(f"exact optimum (least squares on the stacked rows [Φ; √{symbol} Φ′], normal equations in float64): "
            f"loss {optimum.loss:.6f} = data {optimum.data_loss:.6f} + {symbol}·{optimum.derivative_loss:.6f}, "
            f"w* = {_vector(optimum.w)}")
        mse_optimum = result.mse_problem.optimum
        say(f"  the mse optimum on the same data: loss {mse_optimum.loss:.6f}, w* = {_vector(mse_optimum.w)}, "
            f"condition number {mse_optimum.condition_number:.4g}")
    else:
        say(f"least squares (normal equations ΦᵀΦ w = Φᵀy in float64): loss {optimum.loss:.6f}, "
            f"w* = {_vector(optimum.w)}")

    if result.outside_no_grad is not None:
        report_outside_no_grad(result.outside_no_grad, out)
        return

    if result.create_graph is not None:
        report_create_graph(result.create_graph, loss, out)

    shown = result.fits + ([result.mlp] if result.mlp else [])
    title = "without w.grad.zero_(): gradients accumulate" if config.no_zero_grad else "training"
    say(f"\n{title} ({config.epochs} epoch{'s' if config.epochs != 1 else ''}, log every {config.log_every}):")
    print_logs(shown, config.log_every, config.epochs, out)
    say()
    for fit_result in result.fits:
        say(describe_fit(fit_result, optimum, lr))
    if result.mlp is not None:
        say(describe_mlp(result.mlp, optimum))
    for fit_result in shown:
        say(describe_time(fit_result))
    if result.reference_ms is not None and result.fits[0].epoch_ms is not None:
        say(payoff_line(result.fits[0], result.reference_ms))
    if len(result.fits) == 2:
        compare_updates(result.fits[0], result.fits[1], out)
    if result.mse_fit is not None:
        report_against_mse(result, out)

    if config.no_zero_grad:
        for line in accumulation_lines(optimum, lr, result.fits[0]):
            say(line)
    else:
        say(f"\nconvergence at lr {lr:.4g} ({loss.name}):")
        for line in convergence_lines(optimum, lr):
            say("  " + line)
        if result.mse_problem is not None:
            mse_optimum = result.mse_problem.optimum
            say(f"  the derivative rows moved λmin {mse_optimum.hessian_eigenvalues[0].item():.4g} → "
                f"{optimum.hessian_eigenvalues[0].item():.4g} and κ {mse_optimum.condition_number:.4g} → "
                f"{optimum.condition_number:.4g}; {mse_contraction_words(mse_optimum, lr)}")

    if result.curve is not None:
        curve = result.curve
        at_half = int(torch.argmin((curve.x - 0.5).abs()))
        say(f"\npredict() under inference_mode: is_inference={curve.values.is_inference()}, "
            f"requires_grad={curve.values.requires_grad}, fit at x=0.5: {_num(curve.values[at_half].item(), 4)} "
            f"(the clean curve x²: 0.25)")
        if loss.uses_derivative:
            say(f"f′(0.5) = {_num(curve.slopes[at_half].item(), 4)} (the clean curve's 2x: 1.0)"
                + (f"; the mse fit's f′(0.5) = {result.mse_curve.slopes[at_half].item():.4f}"
                   if result.mse_curve is not None else ""))
    if result.routes is not None:
        routes = result.routes
        say(f"f′ at the {len(routes.batched)} training x, two ways: batched VJP vs torch.func.vmap(grad(f_one)): "
            f"max |difference| {routes.vmap_gap:.3g}; vs Φ′w from the formula: {routes.formula_gap:.3g}")
    if result.trap is not None:
        report_trap(result.trap, out)
    if result.sweep is not None:
        report_sweep(result.sweep, config, loss, out)


def data_parallel_line(world: DataParallel) -> str:
    sizes = world.shard_sizes
    shards = " and ".join(f"{sizes.count(size)} × {size} rows" for size in sorted(set(sizes), reverse=True))
    return (f"data parallel: {world.world_size} processes ({world.backend}), shards: {shards}; every backward "
            f"all-reduces w's gradient, each rank's weighted by its rows / n, and each epoch's loss the same way")


def mse_contraction_words(mse_optimum: Optimum, lr: float) -> str:
    """What the mse problem's worst direction does at this lr: shrink, or grow past 2/λmax."""
    factor = mse_optimum.contraction(lr)
    if factor < 1:
        return f"mse at the same lr shrinks w − w* by {factor:.4f} per epoch"
    return (f"mse at the same lr would grow w − w* by |1 − lr·λmax| = {factor:.4g} per epoch "
            f"(lr is above mse's 2/λmax = {mse_optimum.max_stable_lr:.4g})")


def describe_mlp(result: FitResult, optimum: Optimum) -> str:
    if result.diverged_at is not None:
        return f"{name(result)}: diverged at epoch {result.diverged_at}: {DIVERGED}"
    return (f"{name(result)}: {last_loss(result)}; a learned extractor has no closed-form optimum "
            f"(the degree-{optimum.w.shape[0]} polynomial's is {optimum.loss:.6f})")


def report_outside_no_grad(observed: OutsideNoGrad, out: TextIO) -> None:
    print("\nUpdating outside torch.no_grad():", file=out)
    if observed.in_place_error is None:
        print("  in place:  w -= lr * w.grad raised nothing", file=out)
    else:
        print(f"  in place:  w -= lr * w.grad raises RuntimeError: {observed.in_place_error}", file=out)
    for epoch in observed.rebinding:
        if epoch.loss is None:
            print(f"  rebinding: epoch {epoch.epoch}: w.grad is None: w is no longer a leaf (is_leaf={epoch.is_leaf}, "
                  f"grad_fn={epoch.grad_fn}); training stops here.", file=out)
        else:
            print(f"  rebinding: epoch {epoch.epoch}: loss {epoch.loss:.4f}; w = w - lr * w.grad gives "
                  f"is_leaf={epoch.is_leaf}, grad_fn={epoch.grad_fn}", file=out)


def report_create_graph(check: CreateGraphCheck, loss: Loss, out: TextIO) -> None:
    symbol, term = loss.symbol, loss.kind.term
    share = check.with_graph - check.data_only
    print(f"\nwhat create_graph=True is for (w.grad at the initial w):", file=out)
    print(f"  f′ = autograd.grad(f(x).sum(), x, create_graph=True): f′.requires_grad = "
          f"{check.slope_requires_grad[0]}, so {symbol}·{term} has a path back to w", file=out)
    print(f"  w.grad of the whole loss      {_vector(check.with_graph)}", file=out)
    print(f"  w.grad of the data term alone {_vector(check.data_only)}", file=out)
    print(f"  their difference              {_vector(share)}  (by formula {symbol}·2/n Φ′ᵀ(Φ′w − t): "
          f"{_vector(check.by_formula)}, max |difference| {(share - check.by_formula).abs().max().item():.2g})",
          file=out)
    print(f"  create_graph=False (retain_graph=True): f′.requires_grad = {check.slope_requires_grad[1]}; "
          f"w.grad {_vector(check.without_graph)}", file=out)
    print(f"    = the data term's alone (max |difference| "
          f"{(check.without_graph - check.data_only).abs().max().item():.2g}): the {symbol} term contributes "
          f"nothing, and training would silently be mse", file=out)
    if check.freed_error is not None:
        print(f"  create_graph=False and no retain_graph: loss.backward() raises RuntimeError: {check.freed_error}",
              file=out)


def report_against_mse(result: RunResult, out: TextIO) -> None:
    """The derivative loss beside the original mse loop on the same data, from the same w0."""
    mse_fit, mse_optimum, fitted = result.mse_fit, result.mse_problem.optimum, result.fits[0]
    without = ", also without zero_()" if result.config.no_zero_grad else ""
    print(f"\nthe original mse loop on the same data, lr and initial w{without}, for comparison:", file=out)
    print("  " + describe_fit(mse_fit, mse_optimum, result.lr).strip(), file=out)
    if fitted.epoch_ms and mse_fit.epoch_ms:
        print(f"  per epoch: {result.loss.name} {fitted.epoch_ms:.3f} ms (forward, autograd.grad with "
              f"create_graph, backward through both) vs mse {mse_fit.epoch_ms:.3f} ms: "
              f"{fitted.epoch_ms / mse_fit.epoch_ms:.2f}× (measured here, one run each)", file=out)
    if fitted.diverged_at is None and fitted.data_losses:
        print(f"  {result.loss.name}'s data term mean((f − y)²) ended at {fitted.data_losses[-1]:.6f} "
              f"(its optimum's: {result.optimum.data_loss:.6f}; mse's optimum: {mse_optimum.loss:.6f})", file=out)


def report_trap(trap: BatchNormTrap, out: TextIO) -> None:
    show = min(5, len(trap.sum_trick))
    print(f"\nthe BatchNorm trap (extractor in train mode, the {len(trap.sum_trick)} training x, trained weights):",
          file=out)
    print(f"  sum trick grad(f(x).sum(), x)  {_small(trap.sum_trick[:show])} ...", file=out)
    print(f"  diag of jacrev(f)(x), ∂f_i/∂x_i {_small(trap.diagonal[:show])} ...", file=out)
    print(f"  max |sum trick − diagonal| = {trap.gap:.3g}; max |sum trick − column sums of that Jacobian| = "
          f"{trap.column_gap:.2g}", file=out)
    print("  the sum trick returns Σ_j ∂f_j/∂x_i: each x_i moves the batch mean and variance and so every f_j."
          "\n  Trust the diagonal: it is ∂f_i/∂x_i by definition; a loss built on the sum trick trains on the column"
          " sums.", file=out)
    if trap.vmap_error is not None:
        print(f"  vmap(grad(f_one)) in train mode raises: {trap.vmap_error}", file=out)
    if trap.vmap_error_replaced is not None:
        print(f"  after torch.func.replace_all_batch_norm_modules_ (no running statistics), each vmapped sample is a "
              f"batch of one: {trap.vmap_error_replaced}", file=out)
    print(f"  eval mode (running statistics, samples independent): max |sum trick − diagonal| = {trap.eval_gap:.2g}",
          file=out)


def report_sweep(rows: list[SweepRow], config: TrainConfig, loss: Loss, out: TextIO) -> None:
    lr = "each degree's 2/(λmax+λmin)" if config.lr == "auto" else "same lr"
    print(f"\nfeature dimension vs convergence ({loss.name}; {lr}, same epochs and seed; manual update; "
          f"losses are the last epoch's, before its update):", file=out)
    print(f"  {'D':>2}  {'last loss':>10}  {'optimum':>8}  {'epochs to 1%':>14}  {'κ (Hessian)':>12}  "
          f"{'2/λmax':>8}  {'max |cos| of two Φ columns':>26}", file=out)
    for row in rows:
        final = f"{row.final_loss:.4f}" if row.diverged_at is None else f"div@{row.diverged_at}"
        reached = str(row.epochs_to_1pct) if row.epochs_to_1pct is not None else f"> {config.epochs}"
        cosine = f"{row.max_cosine:.4f}" if row.degree > 1 else "— (one column)"
        print(f"  {row.degree:>2}  {final:>10}  {row.optimum_loss:>8.4f}  {reached:>14}  "
              f"{row.condition_number:>12.4g}  {row.max_stable_lr:>8.4g}  {cosine:>26}", file=out)
    # A rise counts only above float64 rounding of the quantity (cosines of orthogonal columns are ~1e-17).
    series = (("κ", [row.condition_number for row in rows]),
              ("max |cos|", [row.max_cosine for row in rows if row.degree > 1]))
    for label, values in series:
        grows = all(b > a * (1 + 1e-9) + 1e-12 for a, b in zip(values, values[1:]))
        print(f"  {label} {'grows with every degree' if grows else 'does not grow with every degree'} here"
              f"{' (from D = 2, the first with two columns)' if label != 'κ' else ''}.", file=out)
    if any(row.within_floor for row in rows):
        print("  (where 1% of an optimum is below float32 eps × the mean squared target, 'epochs to 1%' counts the "
              "epochs to within that tolerance instead)", file=out)


# -- the `make run` summary -----------------------------------------------------------------------

def verdict(result: RunResult) -> str:
    """One line that sums up the run (the `make run` summary prints it)."""
    loss = result.loss.name
    if result.outside_no_grad is not None:
        observed = result.outside_no_grad
        in_place = "raises RuntimeError" if observed.in_place_error else "raised nothing"
        stopped = next((e.epoch for e in observed.rebinding if e.loss is None), None)
        rebinding = (f"w = w - lr * w.grad leaves w.grad None at epoch {stopped}" if stopped is not None
                     else "w = w - lr * w.grad kept a gradient")
        return f"update outside torch.no_grad(): w -= lr * w.grad {in_place}; {rebinding}"
    parts = []
    close = closeness(result.optimum)
    for fit_result in result.fits:
        if fit_result.diverged_at is not None:
            parts.append(f"{fit_result.update} diverged at epoch {fit_result.diverged_at}")
            continue
        gap = fit_result.final_loss - result.optimum.loss
        above = f"{100 * gap / result.optimum.loss:+.1f}%" if result.optimum.loss > 0 else f"{gap:+.2g}"
        within = within_epoch(fit_result.losses, result.optimum)
        reached = f"within {close} from epoch {within}" if within is not None else f"not within {close}"
        parts.append(f"{fit_result.update} {_num(fit_result.final_loss)} ({above}, {reached})")
    line = (f"{loss} loss, lr {result.lr:.4g}, --epochs {result.config.epochs}, last losses: "
            f"{'; '.join(parts)} vs the exact optimum {result.optimum.loss:.6f}")
    if result.mlp is not None:
        line += (f"; mlp diverged at epoch {result.mlp.diverged_at}" if result.mlp.diverged_at is not None
                 else f"; mlp {_num(result.mlp.final_loss)}")
    return line


def write_verdict(result: RunResult) -> None:
    """One JSON line {"verdict": ...} appended to the file LAB_SUMMARY names (`make run` reads it)."""
    summary = os.environ.get("LAB_SUMMARY")
    if not summary:
        return
    try:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(json.dumps({"verdict": verdict(result)}, ensure_ascii=False) + "\n")
    except OSError as err:  # main checked it before training, but a disk fills up (or it is /dev/full)
        print(f"python -m tensor_features.train: error: LAB_SUMMARY={summary} cannot be written ({err.strerror})",
              file=sys.stderr)
        raise SystemExit(2) from None
