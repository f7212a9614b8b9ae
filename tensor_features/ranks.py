"""Ranks and devices: what the lessons' distributed plumbing (lab/distributed.py) and the trainer's
data parallel (trainer/data_parallel.py) both need, and nothing else.

Which device a process computes on (`pick_device`, then per rank `backend_for` and `rank_device`),
where torchrun (or variables set by hand) put this process (`launched`, `Launch`), joining the
process group from that environment (`join_group`, `JoinError`: a usage error in one line), and
printing on rank 0 only. It imports nothing from lab/ or trainer/: both wings import from here.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
# Imported before any process group forms, so that destroy_process_group frees the group. This
# module gives ten collectives the default argument `group=group.WORLD`, evaluated once, when it is
# imported; torch._dynamo imports it (through torch.distributed.fsdp), and the first DDP(...) or
# optimizer.step() imports torch._dynamo. Imported after init_process_group, those defaults keep
# the group alive: destroy_process_group unregisters it but cannot free it, and freeing it is what
# joins gloo's threads (~ProcessGroupGloo waits for its queue, then joins). Unjoined, a gloo worker
# may still be releasing the last barrier's work, whose tensors need the GIL, while the interpreter
# finalizes; Python ends such a thread with pthread_exit, the unwinding meets a noexcept destructor,
# and the rank dies by SIGABRT ("terminate called without an active exception") after its last
# line. Imported first, the defaults are None.
import torch.distributed.nn.functional  # noqa: F401  (see above)

# How long a rank started with RANK, WORLD_SIZE waits for the others to join. Rank 0 gives up after
# this long; a rank that finds no one at MASTER_ADDR after 1.2 to 1.6 times it (torch's TCPStore
# client tries twice, with a random pause between): 94 s measured with 60 s, 51 s with 40 s.
JOIN_TIMEOUT = timedelta(seconds=40)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


# -- the device: one process's, then each rank's -------------------------------------------------

def pick_device(name: str = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' into a torch.device, or raise ValueError saying why not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device cuda: no CUDA device is visible to torch {torch.__version__}; "
                "use --device cpu or --device auto"
            )
        return torch.device("cuda")
    raise ValueError(f"--device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")


def backend_for(device: torch.device, ranks_on_this_machine: int) -> str:
    """nccl when the device is CUDA and every rank on this machine can have a GPU of its own, else gloo."""
    if device.type == "cuda" and torch.cuda.device_count() >= ranks_on_this_machine:
        return "nccl"
    return "gloo"


def rank_device(device: torch.device, backend: str, local_rank: int) -> torch.device:
    """A rank's device: its own GPU under nccl, else the CPU.

    gloo is the CPU backend: on CUDA tensors it has broadcast and all_reduce but no all_gather
    (the backend table in docs/source/distributed.rst), so with fewer GPUs than ranks the ranks
    compute on the CPU.
    """
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


# -- joining a group from the environment (torchrun's, or variables set by hand) -------------------

class JoinError(Exception):
    """The process group cannot form from this environment: a variable that is no number, RANK not
    below WORLD_SIZE, no MASTER_ADDR, a port in use, a peer that never came. A usage error: the
    program says it in one line and exits with code 2."""


@dataclass(frozen=True)
class Launch:
    """This process's place among several, as torchrun describes it (torch/distributed/run.py)."""

    rank: int
    world_size: int
    local_rank: int  # among the processes on this machine: picks this rank's GPU under nccl
    local_world_size: int


def place_rank(device: torch.device, launch: Launch) -> tuple[str, torch.device]:
    """(backend, device) of this rank, decided in one place for the trainer and lesson 09: nccl and
    the rank's own GPU when the device is CUDA and every rank on this machine can have one, else
    gloo on the CPU. Under nccl the GPU is made current here, before the group forms, so that nccl
    binds this rank's GPU."""
    backend = backend_for(device, launch.local_world_size)
    placed = rank_device(device, backend, launch.local_rank)
    if backend == "nccl":
        torch.cuda.set_device(placed)
    return backend, placed


def _whole_number(name: str, lowest: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:  # unset, or set to nothing (`export RANK=`): not set
        return None
    try:
        value = int(text)
    except ValueError:
        raise JoinError(f"{name}={text!r} is not a whole number") from None
    if value < lowest:
        raise JoinError(f"{name}={value} must be at least {lowest}")
    return value


def launched() -> Launch | None:
    """RANK and WORLD_SIZE (and LOCAL_RANK, LOCAL_WORLD_SIZE), checked; None unless both RANK and
    WORLD_SIZE are set (a plain `python ...`). JoinError if a variable that is set cannot be meant."""
    rank, world_size = _whole_number("RANK", 0), _whole_number("WORLD_SIZE", 1)
    local_rank, local_size = _whole_number("LOCAL_RANK", 0), _whole_number("LOCAL_WORLD_SIZE", 1)
    if rank is None or world_size is None:
        return None
    if rank >= world_size:
        raise JoinError(f"RANK={rank} with WORLD_SIZE={world_size}: the ranks are 0 to {world_size - 1}")
    local_size = world_size if local_size is None else local_size  # by hand on one machine: all of them here
    local_rank = rank % local_size if local_rank is None else local_rank
    if local_size > world_size or local_rank >= local_size:
        raise JoinError(f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size} and WORLD_SIZE={world_size} "
                        "do not fit: 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE")
    return Launch(rank, world_size, local_rank, local_size)


def _rendezvous_address(launch: Launch) -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT, where env:// meets (rank 0 serves there unless torchrun does)."""
    address, port = os.environ.get("MASTER_ADDR", "").strip(), os.environ.get("MASTER_PORT", "").strip()
    if not address or not port:
        missing = " and ".join(name for name, value in (("MASTER_ADDR", address), ("MASTER_PORT", port)) if not value)
        raise JoinError(f"RANK={launch.rank} and WORLD_SIZE={launch.world_size} are set, but {missing} "
                        f"{'is' if ' ' not in missing else 'are'} not: torchrun --standalone --nproc-per-node "
                        f"{launch.world_size} sets all four for each process it starts; by hand, set all four")
    number = _whole_number("MASTER_PORT", 1)
    if number > 65535:
        raise JoinError(f"MASTER_PORT={number} is not a port (1 to 65535)")
    return address, number


@contextlib.contextmanager
def _stderr_held_back() -> Iterator[None]:
    """What is written to file descriptor 2 while the block runs (torch's C++ log lines: each retry to
    reach MASTER_ADDR is a warning with a C++ stack) goes to a temporary file, and back to stderr if
    the block ends normally. A block that fails leaves its caller to say what went wrong in one line."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if succeeded:
                held.seek(0)
                text = memoryview(held.read())
                with contextlib.suppress(OSError):
                    while text:
                        text = text[os.write(2, text):]


def join_group(launch: Launch | None, backend: str, collective_timeout: timedelta) -> None:
    """init_process_group from the environment (env://), waiting at most JOIN_TIMEOUT for the other
    ranks; then every collective gets collective_timeout. JoinError, one line, if the group cannot form."""
    if launch is None:
        raise JoinError("RANK and WORLD_SIZE are not set: this process is no rank of a group")
    address, port = _rendezvous_address(launch)
    waited = int(JOIN_TIMEOUT.total_seconds())
    try:
        with _stderr_held_back():
            dist.init_process_group(backend, timeout=JOIN_TIMEOUT)
    except (RuntimeError, ValueError) as error:  # torch's DistError family is RuntimeError
        if "EADDRINUSE" in str(error) or "address already in use" in str(error).lower():
            raise JoinError(f"MASTER_PORT={port} is in use on {address}: choose a free port "
                            "(torchrun --standalone picks one)") from None
        hint = "" if os.environ.get("TORCHELASTIC_RUN_ID") else "; torchrun starts all of them together"
        raise JoinError(f"rank {launch.rank} of WORLD_SIZE={launch.world_size} could not form the process group "
                        f"at {address}:{port} within {waited} s ({one_line(error)[:160]}){hint}") from None
    dist.set_timeout(collective_timeout)


@contextlib.contextmanager
def only_rank_0_prints() -> Iterator[None]:
    """Under torchrun, send what ranks other than 0 print (a Lab's header, --help) into a buffer.

    A Lab keeps the stream that sys.stdout was when it was made, so a lab started inside this
    block on rank 1 prints into the buffer for good. Outside torchrun it changes nothing.
    """
    try:
        launch = launched()
    except JoinError:  # World.start, or the trainer, says what is wrong with the variables
        launch = None
    if launch is None or launch.rank == 0:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield



def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__
