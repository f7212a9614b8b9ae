"""The trainer across processes: `torchrun --nproc-per-node N -m tensor_features.train [flags]`.

The launch, the rendezvous and the collectives are torch.distributed's. torchrun starts the N
processes and gives each RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT (torch/distributed/run.py); init_process_group reads them (env://). What this module
adds for the trainer:

  * Which rows are this rank's: contiguous blocks in rank order. When N does not divide n, the
    first n % N ranks hold one row more (the rule of torch.tensor_split; tests check it).
  * The gradient: a hook on w turns the gradient of this rank's mean loss into the gradient of the
    mean over all n rows: × (rows here / n), then all_reduce with SUM. With equal shards that is
    DDP's average over ranks; with unequal ones, DDP's plain average of per-rank means would weigh
    the rows of a short shard more (lesson 09, observation [7]), and the weights by rows fix that.
  * Each epoch's loss, weighted and summed the same way: every rank sees the loss over all n rows,
    so a loss that stops being finite stops every rank at the same epoch.

Backends: nccl when the trainer computes on CUDA and every process on this machine has a GPU of
its own; gloo on the CPU otherwise (tensor_features.ranks.place_rank, shared with lesson 09).
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from tensor_features.ranks import JoinError, join_group, launched, place_rank

# The timeout of every collective, set once the group has formed (forming it waits at most
# ranks.JOIN_TIMEOUT): a rank that hangs, alive, ends the run after this long ("Timeout for
# operations executed against the process group", init_process_group's docstring says, and a gloo
# all_reduce here did raise after it). Before the first all-reduce every rank draws all n points and
# computes the exact optimum, each at its own pace on a shared machine: hence more than lesson 09's
# 60 s for its 8-row batch.
TIMEOUT = timedelta(seconds=180)


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 for a plain `python -m tensor_features.train`.

    JoinError (a usage error) when RANK, WORLD_SIZE or LOCAL_* are set but cannot be meant: not a
    whole number, RANK not below WORLD_SIZE. MASTER_ADDR and MASTER_PORT are checked on joining.
    """
    launch = launched()
    return 1 if launch is None else launch.world_size


def rank_from_env() -> int:
    """RANK, for the lines a rank writes; 0 when there is none to read."""
    try:
        launch = launched()
    except JoinError:
        return 0
    return 0 if launch is None else launch.rank


def say_once(message: str) -> None:
    """Rank 0 writes message to stderr; every rank returns only after rank 0 has written it.

    For what every rank decides alike (a usage error): torchrun stops every other rank as soon as
    one exits non-zero, so ranks that simply left could take rank 0 down before it had said why.
    Here they meet in a barrier first: in the trainer's process group, or in a gloo group formed
    for the purpose when none is formed yet (torchrun's env:// rendezvous).
    """
    joined_here = not dist.is_initialized()
    if joined_here:
        try:
            join_group(launched(), "gloo", TIMEOUT)
        except JoinError:  # no group to be had (RANK set by hand, say): this rank says it, whichever it
            # is, past only_rank_0_prints (which hides what a rank other than 0 writes to sys.stderr)
            print(message, end="", file=sys.__stderr__, flush=True)
            return
    try:
        if dist.get_rank() == 0:
            print(message, end="", file=sys.stderr, flush=True)
        dist.barrier()
    finally:
        if joined_here:
            dist.destroy_process_group()


@contextlib.contextmanager
def said_once():
    """Around code that every rank runs alike: a usage error in it (its line on stderr, SystemExit 2)
    is written once, by rank 0 (say_once), and then every rank exits with it."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            yield
    except SystemExit as stop:
        if stop.code not in (0, None):
            say_once(said.getvalue())
        raise


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of this rank's rows: contiguous blocks, the first n % world_size one row longer."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class DeviceError(Exception):
    """--device cuda, but this machine has fewer GPUs than processes (a usage error, exit 2)."""


@dataclass
class DataParallel:
    """This process's place in the group: its rank, its rows of the n, its backend and device."""

    rank: int
    world_size: int
    n: int  # rows over all ranks
    backend: str
    device: torch.device

    @classmethod
    def join(cls, n: int, device: torch.device, device_flag: str) -> "DataParallel":
        """Join the process group torchrun prepared (env://), with a timeout on every collective.

        JoinError when the group cannot form within JOIN_TIMEOUT (a peer that never comes, a port in
        use, no MASTER_ADDR); DeviceError when this machine lacks the GPUs --device cuda asks for.
        """
        launch = launched()
        if launch is None:
            raise JoinError("RANK and WORLD_SIZE are not set: this is no rank of a torchrun launch")
        local_size = launch.local_world_size
        backend, placed = place_rank(device, launch)
        if device_flag == "cuda" and backend != "nccl":
            raise DeviceError(f"--device cuda with {local_size} processes on this machine needs {local_size} GPUs; "
                              f"torch sees {torch.cuda.device_count()} (use --device cpu)")
        join_group(launch, backend, TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), n, backend, placed)

    def close(self, together: bool = False) -> None:
        """Leave the process group. together=True (every rank finished): first a barrier, so that no
        rank tears gloo down under a peer still finishing the last collective. Never after a failure:
        a peer may be inside another collective, and the barrier would wait for the timeout."""
        if dist.is_initialized():
            if together:
                with contextlib.suppress(RuntimeError):
                    dist.barrier()
            dist.destroy_process_group()

    # -- the rows ---------------------------------------------------------------------------------

    @property
    def bounds(self) -> tuple[int, int]:
        return shard_bounds(self.n, self.world_size, self.rank)

    @property
    def shard_sizes(self) -> list[int]:
        return [stop - start for start, stop in (shard_bounds(self.n, self.world_size, r)
                                                 for r in range(self.world_size))]

    @property
    def share(self) -> float:
        """This rank's rows / all n rows: the weight of its mean in the mean over all rows."""
        start, stop = self.bounds
        return (stop - start) / self.n

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor of n rows, as a copy of their own (the full tensor can go)."""
        start, stop = self.bounds
        return rows[start:stop].clone()

    # -- the collectives ------------------------------------------------------------------------

    def average_gradient(self, w: torch.Tensor) -> None:
        """Make every backward's gradient of w the gradient of the mean over all n rows.

        A tensor hook on w runs on the gradient this backward computed for w, before AccumulateGrad
        adds it to w.grad. DDP hooks one step later, on AccumulateGrad itself (lesson 09 [8]), and
        all-reduces whatever w.grad holds. Here a w.grad carried over from earlier epochs
        (--no-zero-grad) is already the same on every rank and is left as it is: only the new
        gradient is reduced.
        """

        def all_rows_gradient(grad: torch.Tensor) -> torch.Tensor:
            weighted = grad * self.share  # a new tensor: a hook must not change the one it is given
            dist.all_reduce(weighted)  # SUM over the ranks, in place; every rank gets the same sum
            return weighted

        w.register_hook(all_rows_gradient)

    def mean_over_rows(self, *values: float) -> tuple[float, ...]:
        """Means over this rank's rows -> means over all n rows (one all-reduce, in float64)."""
        weighted = torch.tensor(values, dtype=torch.float64, device=self.device) * self.share
        dist.all_reduce(weighted)
        return tuple(weighted.tolist())

    def rank_0_says(self, message: str | None) -> str | None:
        """Rank 0's message (e.g. a usage error only rank 0 can see) on every rank, so all stop together."""
        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]
