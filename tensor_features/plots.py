"""PNG pictures of a training run (matplotlib, Agg backend: no display needed).

Everything drawn comes from the fields of an experiment.RunResult; nothing here computes a figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402


def write_plots(folder: Path, result) -> list[Path]:
    """Write into folder: the loss curves, the fitted curve, its derivative (losses with f′) and the sweep."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    config, optimum = result.config, result.optimum
    curves = [*result.fits, *([result.mlp] if result.mlp else []), *([result.mse_fit] if result.mse_fit else [])]

    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for fit in curves:
            label = f"{fit.update} (mse, for comparison)" if fit is result.mse_fit else fit.update
            twin = next((f for f in curves if f is not fit and f.update == "manual" and f.losses == fit.losses), None)
            if fit.update == "sgd" and twin is not None:
                label += ": the same losses as manual, drawn as markers on its line"
            style = (dict(linestyle="none", marker="o", markersize=4, fillstyle="none",
                          markevery=max(1, len(fit.losses) // 25)) if fit.update == "sgd"
                     else dict(linewidth=2.5 if fit.update == "manual" else 1.5))
            ax.plot(range(len(fit.losses)), fit.losses, label=label, **style)
        # Two optima can be a hair apart: the wide pale line and the thin dotted one stay both visible.
        ax.axhline(optimum.loss, color="black", linewidth=3, alpha=0.35, label=f"exact optimum {optimum.loss:.4f}")
        if result.mse_problem is not None:
            ax.axhline(result.mse_problem.optimum.loss, color="C4", linewidth=1.2, linestyle=":",
                       label=f"mse optimum {result.mse_problem.optimum.loss:.4f}")
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=f"{result.loss.name} loss (log)",
               title=f"degree {config.degree}, {config.basis}, {result.loss.name}, lr {result.lr:.3g}")
        ax.legend()
        written.append(_save(fig, folder / "loss_curves.png"))

    if result.curve is not None:
        step = max(1, len(result.problem.x) // 2000)  # a scatter of millions of points is one blot
        x, y = result.problem.x[::step].cpu().flatten(), result.problem.y[::step].cpu().flatten()
        x_new = result.curve.x.cpu().flatten()
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.scatter(x, y, s=10, alpha=0.6, label="data: x² + noise" + (f" (every {step}th point)" if step > 1 else ""))
        ax.plot(x_new, result.curve.values.cpu().flatten(), color="C3", linewidth=3, alpha=0.7,
                label="fit: predict() at new x")
        # The clean curve on top of the fit, dashed, so that it shows where the two coincide.
        ax.plot(x_new, x_new**2, color="black", linewidth=1, linestyle="--", zorder=3, label="x², the clean curve")
        ax.set(xlabel="x", ylabel="y", title=f"fitted curve over the data ({result.loss.name})")
        ax.legend()
        written.append(_save(fig, folder / "fit.png"))

    if result.curve is not None and result.loss.uses_derivative:
        x_new = result.curve.x.cpu().flatten()
        epochs = len(result.fits[0].losses)
        weight = f"{result.loss.symbol} = {result.loss.weight:g}"
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for curve, label, color in ((result.curve, f"{result.loss.name}, {weight}", "C3"), (result.mse_curve, "mse", "C0")):
            if curve is not None:
                label = f"{label} ({epochs} epochs, lr {result.lr:.3g})"
                left.plot(x_new, curve.values.cpu().flatten(), color=color, label=label)
                right.plot(x_new, curve.slopes.cpu().flatten(), color=color, label=label)
        reference = dict(color="black", linewidth=1, linestyle="--", zorder=3)
        left.plot(x_new, x_new**2, label="x², the clean curve", **reference)
        right.plot(x_new, 2 * x_new, label="2x, its derivative", **reference)
        left.set(xlabel="x", ylabel="f(x)", title="the fit")
        right.set(xlabel="x", ylabel="f′(x)", title="its derivative (batched VJP at new x)")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        written.append(_save(fig, folder / "derivative.png"))

    if result.sweep is not None:
        rows = result.sweep
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
        degrees = [r.degree for r in rows]
        left.semilogy(degrees, [r.condition_number for r in rows], marker="o")
        left.set(xlabel="feature dimension D", ylabel="condition number of the Hessian",
                 title=f"conditioning vs D ({result.loss.name})")
        gaps = [(r.final_loss - r.optimum_loss) if r.final_loss is not None else float("nan") for r in rows]
        # A gap at or below zero (float32 training loss vs the float64 optimum) has no place on a log axis: left out.
        right.semilogy(degrees, [g if g > 0 else float("nan") for g in gaps], marker="o", color="C1")
        right.set(xlabel="feature dimension D", ylabel="last loss − optimum (log)",
                  title=f"gap after {config.epochs} epochs at lr {config.lr}")
        written.append(_save(fig, folder / "degree_sweep.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
