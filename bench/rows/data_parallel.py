"""Row 11: the trainer's epoch at n = --n (default 2**22) in one process and data-parallel in two (torchrun, gloo, CPU), and the share of the two-process epoch spent in its all-reduces.

How it is measured: an epoch time is FitResult.epoch_ms of tensor_features.trainer.fitting.fit (the mean of
the epochs after the first), and each figure is the median over --repeats fits of EPOCHS epochs.
One process: fit on all n rows, in this process, on its torch threads and on one thread (on a
shared machine, threads that wait for each other can cost more than they bring). Two processes: this file
run as a script under torchrun (`python -m torch.distributed.run --standalone --nproc-per-node 2`),
each process on n/2 rows and one thread (torchrun sets OMP_NUM_THREADS=1 when it is not set); the
row names the thread counts. The all-reduces' share: each rank alternates fits with the
collectives (fit(..., world): w's gradient and the loss all-reduced every epoch) and without them
(the same fit on the same rows, world=None); the share is (with − without) / with, each the slower
rank's median, so it counts the all-reduces and each epoch's wait for the slower rank.
On a CUDA bench run the row is left out: it needs a GPU per process (nccl).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.table import Figure, Row

NUMBER = 11
EPOCHS = 5  # per timed fit; the first is left out of epoch_ms
PROCESSES = 2
LAUNCH_TIMEOUT_S = 600


def median_epoch_ms(fit_once, repeats: int) -> float:
    return statistics.median(fit_once().epoch_ms for _ in range(repeats))


def one_process_ms(n: int, repeats: int) -> tuple[float, float]:
    """(median epoch on torch's threads, on one thread), all n rows in this process."""
    from tensor_features.trainer import fitting, model
    from tensor_features.load_data import load_data

    x, y = load_data(n)
    phi = model.make_features(x, 3)
    w0 = model.initial_weights(3, 0, torch.device("cpu"))
    threads = torch.get_num_threads()
    many = median_epoch_ms(lambda: fitting.fit(phi, y, w0, fitting.FitPlan(0.1, EPOCHS)), repeats)
    torch.set_num_threads(1)
    try:
        one = median_epoch_ms(lambda: fitting.fit(phi, y, w0, fitting.FitPlan(0.1, EPOCHS)), repeats)
    finally:
        torch.set_num_threads(threads)
    return many, one


def two_processes(n: int, repeats: int) -> tuple[dict | None, str]:
    """Launch this file under torchrun: ({'with_ms', 'without_ms', 'threads'}, '') or (None, why not)."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as folder:
        out = Path(folder) / "figures.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(PROCESSES),
                   # "--": torchrun's own parser would read --n as an abbreviation of its --nnodes, --nproc-per-node...
                   str(Path(__file__).resolve()), "--", "--n", str(n), "--repeats", str(repeats), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(root)}
        try:
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s"
        if done.returncode != 0 or not out.exists():
            return None, f"exit code {done.returncode} from torchrun"
        return json.loads(out.read_text()), ""


def measure(device: torch.device, args) -> list[Row]:
    if device.type != "cpu":
        return []
    n, repeats = args.n, args.repeats
    threads = torch.get_num_threads()
    many, one = one_process_ms(n, repeats)
    two, failure = two_processes(n, repeats)
    what = f"trainer epoch n=2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"trainer epoch n={n}"
    rows = [Row("11a", f"{what}, 1 process, {threads} thread{'s' if threads > 1 else ''}", "report",
                Figure(many, None, "ms")),
            Row("11b", f"{what}, 1 process, 1 thread", "report", Figure(one, None, "ms"))]
    if two is None:
        return rows + [Row("11c", f"{what}, 2 processes (torchrun, gloo)", "report", Figure(None, one, "ms", note=failure)),
                       Row("11d", "all-reduce share of the 2-process epoch", "report",
                           Figure(None, None, "ms", note=failure))]
    with_ms, without_ms = two["with_ms"], two["without_ms"]
    each = f"{two['threads']} thread{'s' if two['threads'] > 1 else ''} each"
    return rows + [
        Row("11c", f"{what}, 2 processes (torchrun, gloo, {each})", "report",
            Figure(with_ms, one, "ms", note="reference: 11b; each process has half the rows")),
        Row("11d", "all-reduce per 2-process epoch (w.grad and the loss)", "report",
            Figure(with_ms - without_ms, with_ms, "ms",
                   note="ratio = the all-reduces' share (with − without them, over with; waits included)")),
    ]


# -- run as a script under torchrun: one rank ---------------------------------------------------

def rank_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of bench row 11 (launched by torchrun)")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from tensor_features.trainer import fitting, model
    from tensor_features.trainer.data_parallel import DataParallel
    from tensor_features.load_data import load_data

    cpu = torch.device("cpu")
    world = DataParallel.join(args.n, cpu, "cpu")
    try:
        x, y = load_data(args.n)
        phi, y = world.shard(model.make_features(x, 3)), world.shard(y)  # this rank's rows only
        del x
        w0 = model.initial_weights(3, 0, cpu)
        with_ms, without_ms = [], []
        for _ in range(args.repeats):  # in turns, so that a slow spell of the machine hits both
            dist.barrier()
            with_ms.append(fitting.fit(phi, y, w0, fitting.FitPlan(0.1, EPOCHS), world=world).epoch_ms)
            dist.barrier()
            without_ms.append(fitting.fit(phi, y, w0, fitting.FitPlan(0.1, EPOCHS)).epoch_ms)
        mine = (statistics.median(with_ms), statistics.median(without_ms))
        every_rank = [None] * world.world_size
        dist.all_gather_object(every_rank, mine)
        if world.rank == 0:  # an epoch ends when its slowest rank is done
            figures = {"with_ms": max(r[0] for r in every_rank), "without_ms": max(r[1] for r in every_rank),
                       "threads": torch.get_num_threads()}
            args.out.write_text(json.dumps(figures))
    finally:
        world.close()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())
