"""PNG pictures of a training run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def write_plots(folder: Path, outputs: dict, config) -> list[Path]:
    """Write the loss curves, the fitted curve and (if swept) the degree sweep into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    results = outputs.get("results", {})
    optimum = outputs["optimum"]

    if results:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, result in results.items():
            ax.plot(range(len(result.losses)), result.losses, label=name,
                    linestyle="--" if name == "sgd" else "-")
        ax.axhline(optimum.loss, color="black", linewidth=1, label=f"least-squares optimum {optimum.loss:.4f}")
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="mean squared error (log)",
               title=f"degree {config.degree}, {config.basis}, lr {outputs['lr']:.3g}")
        ax.legend()
        written.append(_save(fig, folder / "loss_curves.png"))

    if "prediction" in outputs:
        step = max(1, len(outputs["x"]) // 2000)  # a scatter of millions of points is one blot
        x, y = outputs["x"][::step].cpu().flatten(), outputs["y"][::step].cpu().flatten()
        x_new = outputs["x_new"].cpu().flatten()
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.scatter(x, y, s=10, alpha=0.6, label="data: x² + noise" + (f" (every {step}th point)" if step > 1 else ""))
        ax.plot(x_new, x_new**2, color="gray", linewidth=1, label="x²")
        ax.plot(x_new, outputs["prediction"].cpu().flatten(), color="C3", label="fit: predict() at new x")
        ax.set(xlabel="x", ylabel="y", title="fitted curve over the data")
        ax.legend()
        written.append(_save(fig, folder / "fit.png"))

    if "sweep" in outputs:
        rows = outputs["sweep"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
        degrees = [r.degree for r in rows]
        left.semilogy(degrees, [r.condition_number for r in rows], marker="o")
        left.set(xlabel="feature dimension D", ylabel="condition number of the Hessian",
                 title="conditioning grows with D")
        gaps = [(r.final_loss - r.optimum_loss) if r.final_loss is not None else float("nan") for r in rows]
        right.semilogy(degrees, [max(g, 1e-12) for g in gaps], marker="o", color="C1")
        right.set(xlabel="feature dimension D", ylabel="final loss - optimum (log)",
                  title=f"gap after {config.epochs} epochs at lr {config.lr}")
        written.append(_save(fig, folder / "degree_sweep.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
