"""Every setting of the trainer in one dataclass; the defaults are the original experiment's.

The command line is built from these fields (see ``build_parser``), so a new setting is
added here once: its default, its type check and its --help line live together.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from tensor_features.cli import DEVICE_CHOICES, OneLineArgumentParser, float_in_range, int_in_range, learning_rate
from tensor_features.trainer.losses import LOSSES


def option(default, help: str, **argparse_kwargs):
    """A dataclass field that also carries its command-line help and type."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    n: int = option(100, "number of data points, evenly spaced on [-1, 1]", type=int_in_range(2, 2**26))
    noise: float = option(0.1, "standard deviation of the Gaussian noise added to y = x², 0..1e6",
                          type=float_in_range(0.0, 1e6))
    degree: int = option(3, "feature dimension D: monomials [x, x², ..., x^D]; with --basis legendre "
                         "P_k(x) − P_k(0) for k = 1..D; with --basis mlp also the learned extractor's D outputs",
                         type=int_in_range(1, 12))
    basis: str = option("monomial", "feature map: the original monomials, Legendre polynomials (same span, "
                        "better conditioned), or a learned MLP extractor trained beside the monomials",
                        choices=("monomial", "legendre", "mlp"))
    loss: str = option("mse", "; ".join(f"{kind.name}: {kind.summary}" for kind in LOSSES.values())
                       + ". f′(x) comes from one batched VJP with create_graph=True, so training is a "
                       "double backward", choices=tuple(LOSSES))
    beta: float = option(1.0, "β > 0, the weight of the derivative term of --loss sobolev, at most 1e6", type=float_in_range(0.0, 1e6, low_inclusive=False))
    penalty: float = option(0.1, "λ > 0, the weight of the slope penalty of --loss smooth, at most 1e6", type=float_in_range(0.0, 1e6, low_inclusive=False))
    lr: float | str = option(0.1, "learning rate in (0, 1e6], or 'auto' for 2/(λmax+λmin) of the loss's Hessian",
                             type=learning_rate)
    epochs: int = option(100, "number of full-batch gradient steps", type=int_in_range(1, 10**7))
    log_every: int = option(10, "print the loss every this many epochs; with --fast also how often the losses, kept "
                            "on the device meanwhile, are copied to the host", type=int_in_range(1))
    update: str = option("both", "which update to run: the original manual one, torch.optim.SGD, or both "
                         "from the same initial w", choices=("manual", "sgd", "both"))
    seed: int = option(0, "seed for the noise and the initial w, 0..2**32-1", type=int_in_range(0, 2**32 - 1))
    device: str = option("auto", "auto picks CUDA when a GPU is visible, else the CPU; under torchrun, CUDA (and "
                         "nccl) only when every process on the machine has a GPU of its own, else the CPU (and gloo)",
                         choices=DEVICE_CHOICES)
    batchnorm: bool = option(False, "with --basis mlp: BatchNorm1d (train mode) after the extractor's first layer, "
                             "and the per-sample trap measured: the batched VJP against the diagonal of the "
                             "batch Jacobian (needs --n <= 2048)")
    no_zero_grad: bool = option(False, "observation point: leave out w.grad.zero_() and watch the "
                                "gradients accumulate")
    outside_no_grad: bool = option(False, "observation point: update w outside torch.no_grad(), "
                                   "in place and by rebinding, and see what breaks (with --loss mse)")
    fast: bool = option(False, "fast path (--loss mse): Φ stored feature by feature (d×n) and the loss compiled "
                        "with torch.compile; same update, gradient still from autograd; no .item() per epoch: the "
                        "losses are copied to the host every --log-every epochs, so a loss that stops being finite "
                        "is seen at the end of its interval; the first epoch compiles (seconds; torch caches the "
                        "result in the system temp folder, TORCHINDUCTOR_CACHE_DIR moves it); on CUDA, in one "
                        "process, each epoch (forward, backward, update, loss log) is captured once in a CUDA "
                        "graph after 3 warm-up epochs and replayed")
    sweep: bool = option(False, "observation point: feature dimension vs convergence, degrees 1..6")
    plot: str | None = option(None, "write PNG plots into this folder (created if needed)", metavar="DIR")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m tensor_features.train",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for spec in fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        meta = dict(spec.metadata)
        help_text = meta.pop("help")
        if spec.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        default = spec.default if spec.default is not MISSING else None
        parser.add_argument(flag, default=default, help=f"{help_text} (default: {default})", **meta)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{spec.name: getattr(args, spec.name) for spec in fields(TrainConfig)})
