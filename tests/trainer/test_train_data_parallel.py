"""The trainer across processes (tensor_features/trainer/data_parallel.py; `torchrun -m tensor_features.train`).

Two launches of 2 processes on the CPU (gloo), each checked against oracles computed here: the
single-process full-batch run (train.run in this process), gradient descent written out in float64
numpy (tests/trainer/oracles.py), and each rank's rows from numpy.array_split. The first launch trains n = 101
points (shards of 51 and 50 rows); the second trains with --no-zero-grad, and rank 1 raises between
the manual and the SGD fit: the run must end non-zero with one line, under a timeout. After the
first launch no rank may still run a gloo thread: the group was freed, not only unregistered. In
process: the settings that do not run data-parallel, the shard rule, and RANK, WORLD_SIZE, ... set
by hand (one line, exit code 2, a peer that never comes waited for a short timeout). Last, bench row
11's plumbing (one small launch). Each launch runs a small driver: the trainer's own main(), with
train.run or train.fit wrapped to save what each rank trained (torch.save), or to raise on rank 1.
"""

import os
import re
import socket
import subprocess
import sys
import time
from argparse import Namespace
from datetime import timedelta

import numpy as np
import pytest
import torch

from tests.support import ROOT, free_port, run_script
from tensor_features import ranks, train
from tensor_features.trainer import data_parallel, fast, fitting, model

# Every test here starts process groups of the trainer: make test-processes runs them (pytest.ini).
pytestmark = pytest.mark.processes
from tensor_features.load_data import load_data
from tensor_features.config import TrainConfig, build_parser
from tests.trainer.oracles import descent_losses, original_problem, stacked_system

MUTANTS = [
    ("tensor_features/train.py", "        problem = environment_problem(compiles=config.fast)  # as in main(): before any rank",
     "        problem = None  # as in main(): before any rank"),
    ("tensor_features/trainer/data_parallel.py", "weighted = grad * self.share", "weighted = grad / self.world_size"),
    ("tensor_features/trainer/data_parallel.py", "start = rank * base + min(rank, extra)", "start = rank * base"),
    ("tensor_features/trainer/data_parallel.py", "            dist.all_reduce(weighted)  # SUM over the ranks",
     "            pass  # SUM over the ranks"),
    ("tensor_features/trainer/data_parallel.py", "dtype=torch.float64, device=self.device) * self.share",
     "dtype=torch.float64, device=self.device)"),
    ("tensor_features/trainer/fitting.py", "            total, data = world.mean_over_rows(total, data)\n",
     "            pass\n"),
    ("tensor_features/trainer/fitting.py", "        world.average_gradient(w)  # w.grad of the mean", "        pass  # w.grad of the mean"),
    ("tensor_features/train.py", "    if world.rank == 0:\n        try:\n            finish(result)",
     "    if True:\n        try:\n            finish(result)"),
    ("tensor_features/train.py", "        return 1\n    finally:\n        world.close(together=trained)",
     "        pass\n    finally:\n        world.close(together=trained)"),
    ("tensor_features/train.py", 'if config.basis == "mlp":\n        return f"--basis mlp: only',
     'if False:\n        return f"--basis mlp: only'),
    ("tensor_features/train.py", "    if config.n < world_size:", "    if config.n < 1:"),
    ("tensor_features/trainer/data_parallel.py", "        if dist.get_rank() == 0:\n            print(message",
     "        if dist.get_rank() == 1:\n            print(message"),
    ("tensor_features/trainer/data_parallel.py", "if stop.code not in (0, None):", "if stop.code not in (0, 2, None):"),
    ("tensor_features/trainer/fast.py", "            losses = list(self.world.mean_over_rows(*losses))",
     "            losses = list(losses)"),
    ("tensor_features/ranks.py", "import torch.distributed.nn.functional  # noqa: F401  (see above)\n", ""),
    ("tensor_features/ranks.py", "    if rank >= world_size:", "    if rank > world_size:"),
    ("tensor_features/ranks.py", "    if not address or not port:", "    if not address:"),
    ("tensor_features/trainer/data_parallel.py", 'print(message, end="", file=sys.__stderr__, flush=True)',
     'print(message, end="", file=sys.stderr, flush=True)'),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- data_parallel.py
    # shard_bounds: off-by-one, rank == extra also gets a longer shard (overlapping rows)
    ('tensor_features/trainer/data_parallel.py', 'return start, start + base + (1 if rank < extra else 0)', 'return start, start + base + (1 if rank <= extra else 0)'),
    # share: every rank weighted 1/world_size (DDP's plain average) instead of rows/n
    ('tensor_features/trainer/data_parallel.py', '        return (stop - start) / self.n\n', '        return 1 / self.world_size\n'),
    # shard(): one row too many
    ('tensor_features/trainer/data_parallel.py', 'return rows[start:stop].clone()', 'return rows[start:stop + 1].clone()'),
    # mean_over_rows: the per-rank means are summed unweighted
    ('tensor_features/trainer/data_parallel.py', 'weighted = torch.tensor(values, dtype=torch.float64, device=self.device) * self.share', 'weighted = torch.tensor(values, dtype=torch.float64, device=self.device)'),
    # ---------------------------------------------------------------- the trainer's new rooms (blind)
    # ranks.py: launched() accepts RANK == WORLD_SIZE: RANK=2 WORLD_SIZE=2 is no longer a one-line JoinError (exit 2) but a launch that hangs/fails later
    ('tensor_features/ranks.py', '    if rank >= world_size:\n', '    if rank > world_size:\n'),
    # ranks.py: join_group's rendezvous check only looks at MASTER_ADDR: with MASTER_PORT unset it crashes with a TypeError traceback (None > 65535) instead of the one-line JoinError naming MASTER_PORT
    ('tensor_features/ranks.py', '    if not address or not port:\n', '    if not address:\n'),
]

CPU = torch.device("cpu")
PROGRAM = "python -m tensor_features.train"
FLOAT32_ROUNDING = 1e-6  # the largest |difference| from the one-process run measured here: 5e-8 (losses and w)
# Without w.grad.zero_() rounding is not damped (the recursion oscillates): measured 5e-7 (losses) and 1.4e-6
# (w) from the one-process run, about as far as that float32 run itself is from float64 (3e-7 and 1.4e-6).
NO_ZERO_GRAD_ROUNDING = 1e-5

SAVE_WHAT_EACH_RANK_TRAINED = """
import os
import sys
import torch
from tensor_features import train

run = train.run


def run_and_save(config, device, world=None):
    result = run(config, device, world)
    torch.save({"losses": [f.losses for f in result.fits], "w": [f.w for f in result.fits],
                "bounds": world.bounds}, f"rank{world.rank}.pt")
    return result


train.run = run_and_save
code = train.main(sys.argv[1:])
# The threads this rank still has, now that it has left the group (Linux names them in /proc).
if os.path.isdir("/proc/self/task"):
    names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
    with open(f"threads{os.environ['RANK']}.txt", "w") as out:
        out.write("\\n".join(names))
sys.exit(code)
"""

RANK_1_RAISES_BEFORE_SGD = """
import sys
import torch
import torch.distributed as dist
from tensor_features import train
from tensor_features.trainer import experiment

fit = experiment.fit


def fit_or_give_up(phi, y, w0, plan, *rest, **options):
    if plan.update == "sgd" and dist.get_rank() == 1:
        raise ValueError("rank 1 gives up")
    result = fit(phi, y, w0, plan, *rest, **options)
    torch.save({"losses": result.losses, "w": result.w}, f"{plan.update}_rank{dist.get_rank()}.pt")
    return result


experiment.fit = fit_or_give_up
sys.exit(train.main(sys.argv[1:]))
"""


def torchrun(folder, driver: str, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc-per-node 2 DRIVER -- FLAGS, in folder; a hang fails by the timeout.

    OMP_NUM_THREADS=1 is what torchrun would set; set here, it spares us torchrun's warning about it.
    """
    script = folder / "driver.py"
    script.write_text(driver)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), "--", *flags], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def largest_difference(a, b) -> float:
    return (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max().item()


# -- launch 1: n = 101 on two ranks, against the single-process full batch ---------------------------

@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uneven")
    done = torchrun(folder, SAVE_WHAT_EACH_RANK_TRAINED, "--n", "101")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]
    for rank in (0, 1):
        threads = folder / f"threads{rank}.txt"
        ranks[rank]["threads"] = threads.read_text().split("\n") if threads.exists() else None
    return done, ranks


@pytest.fixture(scope="module")
def one_process():
    """The oracle: the same settings in one process, all 101 rows in one batch, in this process."""
    return train.run(TrainConfig(n=101), CPU)


def test_each_rank_trains_its_rows_and_ends_with_the_same_w(uneven):
    _, ranks = uneven
    blocks = np.array_split(np.arange(101), 2)  # numpy's rule: the first 101 % 2 blocks one row longer
    assert [rank["bounds"] for rank in ranks] == [(int(b[0]), int(b[-1]) + 1) for b in blocks] == [(0, 51), (51, 101)]
    for update in (0, 1):  # manual, sgd
        assert torch.equal(ranks[0]["w"][update], ranks[1]["w"][update])  # the same all-reduced sum on both
        assert ranks[0]["losses"][update] == ranks[1]["losses"][update]


def test_no_rank_keeps_a_gloo_thread_after_leaving_the_group(uneven):
    # destroy_process_group only unregisters the group; freeing it joins gloo's threads. A group kept
    # alive (torch.distributed.nn.functional imported after it formed holds it in default arguments)
    # leaves them running into the interpreter's finalization, where one of them, still releasing the
    # last barrier's tensors, needs the GIL: SIGABRT, "terminate called without an active exception".
    _, ranks = uneven
    for rank in ranks:
        if rank["threads"] is None:
            pytest.skip("no /proc/self/task to read thread names from")
        assert "python" in rank["threads"]  # the main thread, named after the program: the list is real
        assert [name for name in rank["threads"] if "gloo" in name] == [], rank["threads"]


def test_the_trajectory_is_the_full_batch_one_within_float32_rounding(uneven, one_process):
    _, ranks = uneven
    x, y = load_data(101, 0.1, 0)
    by_hand, w_by_hand = descent_losses(x, y, model.initial_weights(3, 0, CPU), 0.1, 100)  # float64 numpy
    for update, fitted in enumerate(one_process.fits):
        losses, w = ranks[0]["losses"][update], ranks[0]["w"][update]
        assert len(losses) == 100
        assert largest_difference(losses, fitted.losses) < FLOAT32_ROUNDING
        assert largest_difference(w, fitted.w) < FLOAT32_ROUNDING
        assert largest_difference(losses, by_hand) < FLOAT32_ROUNDING
        assert largest_difference(w, w_by_hand) < FLOAT32_ROUNDING
    # The weights by rows matter here: the mean of the two shards' mean gradients is another descent.
    phi = model.make_features(x, 3)
    w0 = model.initial_weights(3, 0, CPU)
    halves = [(phi[:51], y[:51]), (phi[51:], y[51:])]
    w = w0.clone()
    for _ in range(100):
        w -= 0.1 * sum(2 / len(b) * a.T @ (a @ w - b) for a, b in halves) / 2
    assert largest_difference(ranks[0]["w"][0], w) > 100 * FLOAT32_ROUNDING


def masked(line: str) -> tuple[str, list[str]]:
    return re.sub(r"-?\d+\.?\d*(?:e[-+]\d+)?", "#", line), re.findall(r"-?\d+\.?\d*(?:e[-+]\d+)?", line)


def test_rank_0_prints_the_single_process_report_and_rank_1_nothing(uneven, one_process, capsys):
    done, _ = uneven
    assert done.stderr == ""  # no rank wrote anything to stderr, and torchrun did not either
    train.report(one_process)
    single = capsys.readouterr().out.splitlines()
    lines = done.stdout.splitlines()
    assert lines[0] == single[0]  # the header, printed once: rank 1 printed nothing
    assert lines[1] == ("data parallel: 2 processes (gloo), shards: 1 × 51 rows and 1 × 50 rows; every backward "
                        "all-reduces w's gradient, each rank's weighted by its rows / n, and each epoch's loss the same way")
    del lines[1]
    assert len(lines) == len(single)
    for ours, theirs in zip(lines, single):
        (text, numbers), (their_text, their_numbers) = masked(ours), masked(theirs)
        assert text == their_text, (ours, theirs)
        if " epochs in " in ours or "largest |loss_manual - loss_sgd|" in ours:
            continue  # times, and the rounding gap between manual and SGD: each run's own
        for number, their_number in zip(numbers, their_numbers):
            digits = len(their_number.split(".")[1]) if "." in their_number else 0
            assert abs(float(number) - float(their_number)) <= 10.0 ** -digits, (ours, theirs)


# -- launch 2: --no-zero-grad, then rank 1 raises ------------------------------------------------------

def test_a_rank_that_raises_ends_the_run_with_one_line_and_no_hang(tmp_path):
    done = torchrun(tmp_path, RANK_1_RAISES_BEFORE_SGD, "--no-zero-grad", "--epochs", "200", timeout=120)
    assert done.returncode != 0
    assert "tensor_features.train   torch" not in done.stdout  # rank 0 stopped before its report
    ours = [line for line in done.stderr.splitlines() if line.startswith(PROGRAM)]
    assert f"{PROGRAM}: rank 1 failed: ValueError: rank 1 gives up" in ours
    for line in ours:  # rank 0 may fail too (its all-reduce lost its peer), in one line, or be stopped by torchrun
        assert re.fullmatch(rf"{PROGRAM}: rank [01] failed: \w+: .{{1,300}}", line), line
    assert not re.search(r"^\[rank\d\]:", done.stderr, re.M), done.stderr[-3000:]  # no traceback from a rank

    # Both ranks trained the manual fit first, w.grad never zeroed: the summed-gradient recursion.
    manual = torch.load(tmp_path / "manual_rank1.pt")
    x, y, phi, w0 = original_problem()
    single = fitting.fit(phi, y, w0, fitting.FitPlan(0.1, 200, "manual", zero_grad=False))
    assert largest_difference(manual["losses"], single.losses) < NO_ZERO_GRAD_ROUNDING
    assert largest_difference(manual["w"], single.w) < NO_ZERO_GRAD_ROUNDING
    a, b = stacked_system(x, y)
    w, summed, losses = w0.double().numpy(), 0, []
    for _ in range(200):  # float64 by hand: w -= lr * (g_0 + ... + g_k)
        residual = a @ w - b
        losses.append(float((residual**2).mean()))
        summed = summed + 2 / len(x) * a.T @ residual
        w = w - 0.1 * summed
    assert largest_difference(manual["losses"], losses) < NO_ZERO_GRAD_ROUNDING
    assert largest_difference(manual["w"], w) < NO_ZERO_GRAD_ROUNDING


# -- in process -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, world_size", [(101, 2), (100, 2), (10, 3), (7, 7), (2**22 + 3, 4)])
def test_shards_are_contiguous_blocks_as_numpy_splits_them(n, world_size):
    sizes = [len(block) for block in np.array_split(np.arange(min(n, 1000)), world_size)] if n <= 1000 else \
        [n // world_size + (1 if rank < n % world_size else 0) for rank in range(world_size)]
    bounds = [data_parallel.shard_bounds(n, world_size, rank) for rank in range(world_size)]
    assert [stop - start for start, stop in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world_size - 1))
    if n <= 1000:
        assert [len(part) for part in torch.tensor_split(torch.arange(n), world_size)] == sizes


def as_rank(monkeypatch, rank: int, world_size: int = 2):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


def the_only_rank(monkeypatch):
    """The environment torchrun gives the one process of a world of one: this test process."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("args, named", [
    (["--basis", "mlp"], "--basis mlp"), (["--loss", "sobolev"], "--loss sobolev"), (["--sweep"], "--sweep"),
    (["--outside-no-grad"], "--outside-no-grad"), (["--n", "3", "--degree", "1"], "--n 3: each of the 4 processes"),
    (["--n", "x"], "argument --n"),
])
def test_settings_that_do_not_run_data_parallel_stop_every_rank_with_one_line(args, named, monkeypatch, capsys):
    said = []  # say_once itself needs the other ranks (tested below in a world of one)
    monkeypatch.setattr(data_parallel, "say_once", said.append)
    for rank in (0, 1):
        as_rank(monkeypatch, rank, world_size=4)
        with pytest.raises(SystemExit) as stopped:
            train.main(args)
        assert stopped.value.code == 2 and capsys.readouterr() == ("", "")  # nothing printed past say_once
    assert said[0] == said[1] and said[0].startswith(f"{PROGRAM}: error: {named}") and said[0].count("\n") == 1


def test_say_once_writes_on_rank_0_after_joining_and_leaves_no_group(monkeypatch, capsys):
    the_only_rank(monkeypatch)
    data_parallel.say_once("one line\n")
    assert capsys.readouterr().err == "one line\n"
    assert not torch.distributed.is_initialized()


class RecordingWorld:
    """A stand-in for DataParallel in one process: the gradient hook is left out, and each "mean over
    all rows" doubles the values (easy to tell apart from the unreduced ones) and records how many it got."""

    def __init__(self):
        self.calls = []

    def average_gradient(self, w):
        pass

    def mean_over_rows(self, *values):
        self.calls.append(len(values))
        return tuple(2 * value for value in values)


def test_fast_losses_are_reduced_once_per_log_interval():
    # --fast under torchrun: one all-reduce per interval of losses, not one per epoch. 20 epochs read
    # every 7: the first epoch alone (it compiles), then 7, 7 and the last 5.
    x, y, phi, w0 = original_problem()
    world = RecordingWorld()
    plan = fitting.FitPlan(0.1, 20, log_every=7)
    reduced = fast.fit_fast(fast.FastLoss(phi, y, compile=False), w0, plan, world=world)
    alone = fast.fit_fast(fast.FastLoss(phi, y, compile=False), w0, plan)
    assert world.calls == [1, 7, 7, 5]
    assert reduced.losses == [2 * loss for loss in alone.losses]


def test_the_same_settings_run_in_one_process(monkeypatch):
    # Without torchrun nothing is refused: the refusals are about processes, not about the settings.
    assert train.check_data_parallel(TrainConfig(basis="mlp", loss="sobolev", sweep=True), world_size=1) is None
    as_rank(monkeypatch, 0, world_size=1)  # torchrun --nproc-per-node 1: the one-process trainer
    assert data_parallel.world_size_from_env() == 1
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("WORLD_SIZE", "2")  # WORLD_SIZE alone is not torchrun's
    assert data_parallel.world_size_from_env() == 1


# -- RANK, WORLD_SIZE, ... set by hand: one line and exit code 2, never a traceback or a wait without end --

DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                         "TORCHELASTIC_RUN_ID")


def by_hand(monkeypatch, **variables: str) -> None:
    """Exactly these distributed variables, as a learner might set them without torchrun."""
    for name in DISTRIBUTED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def stops_with_one_line(capfd) -> str:
    """train.main in process: exit code 2, exactly one line on stderr (file descriptor 2 included,
    where torch's C++ logs would go), no group left behind. Returns the line."""
    with pytest.raises(SystemExit) as stopped:
        train.main(["--epochs", "1"])
    out, err = capfd.readouterr()
    assert stopped.value.code == 2 and err.count("\n") == 1 and out == "", err
    assert not torch.distributed.is_initialized()
    return err


@pytest.mark.parametrize("variables, said", [
    ({"RANK": "0", "WORLD_SIZE": "2"},
     "RANK=0 and WORLD_SIZE=2 are set, but MASTER_ADDR and MASTER_PORT are not: torchrun --standalone "
     "--nproc-per-node 2 sets all four"),
    ({"RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"RANK": "two", "WORLD_SIZE": "2"}, "RANK='two' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2: the ranks are 0 to 1"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 must be at least 0"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "1"},
     "LOCAL_RANK=1, LOCAL_WORLD_SIZE=1 and WORLD_SIZE=2 do not fit"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "RANK=1 and WORLD_SIZE=2 are set, but MASTER_PORT is not"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
     "MASTER_PORT='http' is not a whole number"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"},
     "MASTER_PORT=70000 is not a port (1 to 65535)"),
])
def test_distributed_variables_that_cannot_work_stop_with_one_line(variables, said, monkeypatch, capfd):
    by_hand(monkeypatch, **variables)
    assert stops_with_one_line(capfd).startswith(f"{PROGRAM}: error: {said}")


@pytest.mark.parametrize("rank, reason", [(0, "1/2 clients joined"), (1, "timed out")])
def test_a_peer_that_never_comes_is_waited_for_a_bounded_time(rank, reason, monkeypatch, capfd):
    # Rank 0 serves the rendezvous and waits for rank 1; rank 1 tries to reach rank 0 (torch logs each
    # try from C++, with a stack: held back, so the line below is all there is). Joining waits
    # ranks.JOIN_TIMEOUT, a minute; 2 s here.
    monkeypatch.setattr(ranks, "JOIN_TIMEOUT", timedelta(seconds=2))
    port = free_port()
    by_hand(monkeypatch, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    started = time.monotonic()
    said = stops_with_one_line(capfd)
    assert time.monotonic() - started < 60  # the 2 s timeout and the client's retry, not a collective's 180 s
    assert said.startswith(f"{PROGRAM}: error: rank {rank} of WORLD_SIZE=2 could not form the process group at "
                           f"127.0.0.1:{port} within 2 s ("), said
    assert reason in said.lower() and said.rstrip().endswith("torchrun starts all of them together"), said


def test_a_port_in_use_is_said_at_once(monkeypatch, capfd):
    with socket.socket() as taken:  # a listening socket that is not a TCPStore holds MASTER_PORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        by_hand(monkeypatch, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        said = stops_with_one_line(capfd)
    assert said == (f"{PROGRAM}: error: MASTER_PORT={port} is in use on 127.0.0.1: choose a free port "
                    "(torchrun --standalone picks one)\n")


def test_a_usage_error_on_rank_1_alone_is_said_by_rank_1(monkeypatch, capfd):
    # said_once leaves the saying to rank 0, through a group formed for it; set by hand there is no
    # group to form, and rank 1, whose stderr only_rank_0_prints hides, must say it itself.
    by_hand(monkeypatch, RANK="1", WORLD_SIZE="2")
    with pytest.raises(SystemExit) as stopped:
        train.main(["--n", "x"])
    out, err = capfd.readouterr()
    assert stopped.value.code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"{PROGRAM}: error: argument --n"), err


def test_rank_and_world_size_by_hand_in_a_terminal():
    # The command a learner types, without torchrun and without MASTER_ADDR: a line, not a traceback.
    clean = {name: "" for name in DISTRIBUTED_VARIABLES}
    done = run_script("-m", "tensor_features.train", env={**clean, "RANK": "0", "WORLD_SIZE": "2"}, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{PROGRAM}: error: RANK=0 and WORLD_SIZE=2 are set, but MASTER_ADDR and "
                                  "MASTER_PORT are not"), done.stderr
    assert done.stdout == ""


# -- bench row 11 ----------------------------------------------------------------------------------

def test_bench_row_11_plumbing_small(monkeypatch):
    """measure() with torchrun replaced by its one-process case: the row's own rank_main, run here as
    the only rank of a gloo group; the command line must be the one torchrun would get."""
    from bench.rows import FAMILIES
    from bench.rows import data_parallel as row

    assert FAMILIES[11] is row
    launched = []

    def one_process_torchrun(command, **kwargs):
        launched.append(command)
        start = command.index("--")
        assert command[:start] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc-per-node", "2", row.__file__]
        the_only_rank(monkeypatch)
        code = row.rank_main(command[start + 1:])
        return subprocess.CompletedProcess(command, code, "", "")

    monkeypatch.setattr(row.subprocess, "run", one_process_torchrun)
    rows = row.measure(CPU, Namespace(n=4096, repeats=1))
    assert len(launched) == 1 and launched[0][-6:-2] == ["--n", "4096", "--repeats", "1"]
    assert [r.key for r in rows] == ["11a", "11b", "11c", "11d"]
    many, one, two, share = (r.cpu for r in rows)
    assert many.value > 0 and one.value > 0 and two.value > 0 and two.reference == one.value
    assert share.reference == two.value and share.ratio == pytest.approx(share.value / two.value)
    threads = torch.get_num_threads()  # this process is the one rank here, and its thread count is restored
    assert rows[0].what.startswith(f"trainer epoch n=2^12, 1 process, {threads} thread")
    assert rows[1].what == "trainer epoch n=2^12, 1 process, 1 thread" and f"{threads} thread" in rows[2].what
    assert row.measure(torch.device("cuda"), Namespace(n=4096, repeats=1)) == []  # needs a GPU per process


def test_bench_row_11_says_when_torchrun_fails(monkeypatch):
    from bench.rows import data_parallel as row

    monkeypatch.setattr(row.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 1))
    rows = row.measure(CPU, Namespace(n=64, repeats=1))
    assert [r.cpu.value for r in rows[2:]] == [None, None]
    assert rows[2].cpu.note == rows[3].cpu.note == "exit code 1 from torchrun"  # bench's "broken" rule reads it


def test_an_unwritable_summary_stops_every_rank_before_it_joins(monkeypatch, capfd):
    # As without torchrun: the environment is checked before any work, here before the join
    # (which would wait for a peer that this test never starts).
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LAB_SUMMARY", "/etc/hostname/summary.jsonl")  # under a file: unwritable, root too
    with pytest.raises(SystemExit) as done:
        train.main_data_parallel(build_parser(), ["--epochs", "2"], 2)
    assert done.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()  # rank 0 says it on the real stderr
    assert len(err) == 1 and "LAB_SUMMARY=/etc/hostname/summary.jsonl cannot be written" in err[0]


def test_a_rank_is_placed_once_for_both_the_trainer_and_lesson_09():
    from tensor_features.ranks import Launch, place_rank

    # On the CPU, or with fewer GPUs than ranks on the machine: gloo, and every rank on the CPU.
    launch = Launch(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert place_rank(torch.device("cpu"), launch) == ("gloo", torch.device("cpu"))
    if torch.cuda.device_count() < 2:
        assert place_rank(torch.device("cuda"), launch) == ("gloo", torch.device("cpu"))
