"""Tensor Feature Trainer: the original training loop on polynomial features, compared with the exact answer.

    python -m tensor_features.train                  # the original: manual update vs torch.optim.SGD
    python -m tensor_features.train --loss sobolev   # + β·mean((f′ − 2x)²): f′ by a batched VJP, a double backward
    python -m tensor_features.train --loss smooth    # + λ·mean(f′²): a slope penalty
    python -m tensor_features.train --sweep          # feature dimension vs convergence speed
    python -m tensor_features.train --no-zero-grad   # forget w.grad.zero_()
    python -m tensor_features.train --outside-no-grad
    python -m tensor_features.train --basis mlp --batchnorm --loss sobolev   # the per-sample trap
    python -m tensor_features.train --basis legendre --lr auto --plot plots
    python -m tensor_features.train --n 4194304 --fast   # same loop, loss compiled (on CUDA: one graph per epoch)
    torchrun --standalone --nproc-per-node 2 -m tensor_features.train   # data parallel: 2 processes, half the rows each
    torchrun --standalone --nproc-per-node 2 -m tensor_features.train -- --n 101   # "--": else torchrun reads --n

The data are y = x² + noise on [-1, 1]; the model is f(x) = Φ(x) w with Φ = [x, x², x³] (--degree
3). With a fixed basis every loss here is a quadratic in w, so its exact minimum is one
least-squares solve away: every run is compared with it.

Where things are: the mathematics in tensor_features/trainer/model.py, the training loop in fitting.py,
the observation points in observations.py, the data-parallel plumbing in data_parallel.py. This
file is the command line: run() computes a RunResult, report() prints it, plots.py draws it.
"""

# The docstring above is --help, word for word. The rest of trainer/: losses.py (the loss
# registry), problem.py (one run's exact problem), fast.py (--fast), experiment.py (run() and
# RunResult), report.py (report() and `make run`'s verdict).

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tensor_features.cli import (cannot_append, cannot_write_into, device_or_exit, environment_problem,
                                 missing_folders, remove_empty, run_main)
from tensor_features.config import TrainConfig, build_parser, config_from_args
from tensor_features.ranks import JoinError, one_line, only_rank_0_prints
from tensor_features.trainer.data_parallel import (DataParallel, DeviceError, rank_from_env, said_once,
                                                   world_size_from_env)
from tensor_features.trainer.experiment import RunResult, run
from tensor_features.trainer.losses import LOSSES
from tensor_features.trainer.problem import ProblemError
from tensor_features.trainer.report import report, write_verdict

BATCHNORM_MAX_N = 2048  # the trap builds the n×n batch Jacobian


class UsageError(Exception):
    """A setting that parses but cannot run (main turns it into one line and exit 2)."""


def problem_text(err: ProblemError, config: TrainConfig) -> str:
    """A problem without a usable exact optimum, in the flags that set it up and those that help."""
    if err.sweep is not None:
        where = (f"--sweep at degree {err.degree} (--basis {err.basis}; the sweep fits degrees "
                 f"{err.sweep[0]}..{err.sweep[-1]})")
    else:
        flag = LOSSES[config.loss].weight_flag
        weight = f" --{flag} {getattr(config, flag):g}" if flag else ""
        where = (f"--degree {err.degree} --basis {err.basis} --n {config.n} "
                 f"--noise {config.noise:g}{weight}")
    advice = ""
    if err.shortfall is not None:
        short = err.shortfall
        advice = (f"; degree {short.degree} needs {short.degree} distinct nonzero x and "
                  f"--n {short.points} gives {short.nonzero} (every feature is 0 at x = 0): "
                  f"use --n {short.enough_points} or more")
    elif err.too_alike:
        advice = ("; the features are too alike for float64 here: use a lower degree or "
                  "--basis legendre")
    return f"{where}: {err.reason}{advice}"


# -- the command line -------------------------------------------------------------------------

def check_combinations(config: TrainConfig) -> str | None:
    """Settings that parse one by one but do not go together: the one-line reason, or None."""
    if config.degree > config.n:  # (the points' exact rank, x = 0 included, is checked on the data)
        return f"--degree {config.degree} needs at least {config.degree} points (got --n {config.n})"
    if config.batchnorm and config.basis != "mlp":
        return "--batchnorm adds BatchNorm to the learned extractor: use it with --basis mlp"
    if config.batchnorm and config.n > BATCHNORM_MAX_N:
        return f"--batchnorm builds the n×n batch Jacobian: use --n <= {BATCHNORM_MAX_N} (got --n {config.n})"
    derivative = LOSSES[config.loss].uses_derivative
    if derivative and config.fast:
        return f"--fast compiles the original mse loss only; drop --fast or use --loss mse (got --loss {config.loss})"
    if derivative and config.outside_no_grad:
        return f"--outside-no-grad shows the original mse update; use --loss mse (got --loss {config.loss})"
    if config.fast and config.basis == "mlp":
        return "--fast compiles the fixed-basis loss; the mlp extractor is not on that path"
    if config.fast and config.outside_no_grad:
        return "--outside-no-grad runs the original loop's update by hand; drop --fast"
    if config.outside_no_grad and config.no_zero_grad:
        return "--outside-no-grad and --no-zero-grad are two observation points: use one at a time"
    defaults, weighted = TrainConfig(), LOSSES[config.loss].weight_flag
    for kind in LOSSES.values():  # a weight flag set for a loss that has no use for it
        flag = kind.weight_flag
        if flag and flag != weighted and getattr(config, flag) != getattr(defaults, flag):
            return (f"--{flag} weighs {kind.weight_words} of --loss {kind.name} "
                    f"(got --loss {config.loss})")
    if config.sweep and config.basis == "mlp":
        return "--sweep compares fixed bases degree by degree: use --basis monomial or legendre"
    if config.plot is not None and not config.plot.strip():
        return "--plot needs a folder name"
    return None


def check_data_parallel(config: TrainConfig, world_size: int) -> str | None:
    """Settings that do not run data-parallel (torchrun, WORLD_SIZE > 1): the one-line reason, or None."""
    if world_size == 1:
        return None
    alone = f"run it without torchrun (here WORLD_SIZE is {world_size})"
    if config.n < world_size:
        return f"--n {config.n}: each of the {world_size} processes needs at least one row"
    if config.basis == "mlp":
        return f"--basis mlp: only w's gradient is all-reduced across processes, not the extractor's; {alone}"
    if LOSSES[config.loss].uses_derivative:
        return f"--loss {config.loss}: the data-parallel trainer trains --loss mse only; {alone}"
    if config.sweep:
        return f"--sweep trains six more fits, one per degree, in one process; {alone}"
    if config.outside_no_grad:
        return f"--outside-no-grad shows one process's update breaking; {alone}"
    return None


PLOT_FILES = ("loss_curves.png", "fit.png", "derivative.png", "degree_sweep.png")  # what plots.py may write


def plot_folder_problem(config: TrainConfig) -> str | None:
    """Can the --plot folder take the plots? The one-line reason if not, found before any training.

    It creates nothing that stays: the folder is made when the plots are written, so a run that
    stops before (a late usage error, Ctrl-C) leaves no empty folder behind.
    """
    if not config.plot:
        return None
    problem = cannot_write_into(config.plot)
    if problem:
        return f"--plot {config.plot}: cannot write into the folder ({problem})"
    for name in PLOT_FILES:  # e.g. a folder standing where a plot's file should go
        path = Path(config.plot) / name
        problem = cannot_append(path) if path.exists() else None
        if problem:
            return f"--plot {config.plot}: cannot write {path} ({problem})"
    return None


def write_plot_files(folder: Path, result: RunResult) -> list[Path]:
    """plots.write_plots, each file drawn in a temporary folder inside `folder`, then moved into place whole.

    An error or Ctrl-C on the way leaves no half-written plot, and no folder that this run made and
    left empty. A file that cannot be written is a UsageError naming it.
    """
    from tensor_features.plots import write_plots  # matplotlib only when asked for

    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".plots-") as staging:
            written = []
            for drawn in write_plots(Path(staging), result):
                written.append(drawn.replace(folder / drawn.name))
            return written
    except OSError as err:
        remove_empty(created)
        raise UsageError(f"--plot {folder}: cannot write {getattr(err, 'filename2', None) or err.filename} "
                         f"({err.strerror})") from None
    except BaseException:
        remove_empty(created)
        raise


def finish(result: RunResult) -> None:
    """The report, the plots if asked for, the verdict for `make run`."""
    report(result)
    if result.config.plot:
        for path in write_plot_files(Path(result.config.plot), result):
            print(f"wrote {path}")
    write_verdict(result)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    try:
        world_size = world_size_from_env()
    except JoinError as err:  # RANK, WORLD_SIZE, ... set (by hand) to what no launch can mean
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if world_size > 1:
        return main_data_parallel(parser, argv, world_size)
    config = config_from_args(parser.parse_args(argv))
    device = device_or_exit(parser, config.device)
    problem = check_combinations(config) or plot_folder_problem(config)
    if problem:
        parser.error(problem)
    problem = environment_problem(compiles=config.fast)  # LAB_SUMMARY, torch.compile's cache folder
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    try:
        result = run(config, device)
        finish(result)
    except ProblemError as err:
        parser.error(problem_text(err, config))
    except UsageError as err:
        parser.error(str(err))
    return 0


def main_data_parallel(parser, argv: list[str] | None, world_size: int) -> int:
    """One rank of `torchrun --nproc-per-node N -m tensor_features.train`: train on this rank's rows,
    rank 0 reports. A usage error stops every rank with exit 2 and one line; an error on one rank is
    one line on stderr and exit 1, and torchrun then stops the other ranks and exits non-zero."""
    # Every rank reads the same command line and decides alike; rank 0 says it (said_once).
    with only_rank_0_prints(), said_once():
        config = config_from_args(parser.parse_args(argv))
        problem = check_combinations(config) or check_data_parallel(config, world_size)
        if problem:
            parser.error(problem)
        problem = environment_problem(compiles=config.fast)  # as in main(): before any rank joins or trains
        if problem:
            parser.exit(2, f"{parser.prog}: error: {problem}\n")
    # What this machine has may differ between machines: a rank that lacks it says so itself.
    device = device_or_exit(parser, config.device)
    try:
        world = DataParallel.join(config.n, device, config.device)
    except DeviceError as err:
        parser.error(str(err))
    except JoinError as err:  # no MASTER_ADDR, a port in use, a peer that never came
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except (RuntimeError, ValueError) as error:  # anything else on the way in (torch.cuda.set_device, say)
        print(f"{parser.prog}: rank {rank_from_env()} could not join the process group: {one_line(error)}",
              file=sys.stderr, flush=True)
        return 1
    trained = False
    try:
        with only_rank_0_prints(), said_once():
            # Only rank 0 writes plots, so only rank 0 creates the folder; every rank hears its verdict.
            problem = world.rank_0_says(plot_folder_problem(config) if world.rank == 0 else None)
            if problem:
                parser.error(problem)
            try:
                result = run(config, world.device, world)
                trained = True  # so did every peer, or a collective would have failed: leave together
            except ProblemError as err:  # found alike on every rank, before any all-reduce
                parser.error(problem_text(err, config))
    except Exception as error:  # noqa: BLE001 - one line per failing rank, then torchrun ends the run
        print(f"{parser.prog}: rank {world.rank} failed: {one_line(error)}", file=sys.stderr, flush=True)
        return 1
    finally:
        world.close(together=trained)
    if world.rank == 0:
        try:
            finish(result)
        except UsageError as err:
            parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
