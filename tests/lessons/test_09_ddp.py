"""09 DDP: every value the lesson's checks saw (and the locals its observations left), on both
ranks (lab.run(...).ranks, one Seen per rank), against oracles written here: the
gradient of one process on the full batch (autograd on a plain model in this process) and the
mean-squared-error gradient by hand, (2/n)·Σ (x·w + b − y)·x, for each shard; the sum and
uneven-shard traps by that arithmetic; a disagreement on rank 1 alone, and a rank that raises,
each ending the run as promised (exit 1, one line), under a timeout. Under torchrun, no rank may
still run a gloo thread when it exits; RANK, WORLD_SIZE, ... set by hand end with one line and
exit code 2.

The observations run in one world of 2 worker processes (gloo, CPU) that this file starts once.
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py).
"""

import io
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from tests.support import Promise, ROOT, free_port, load_lesson, quiet_lab, run_script
from tensor_features import ranks
from tensor_features.lab import distributed
from tensor_features.lab.distributed import World
from tensor_features.lab.core import FORCE_AGREE_ENV, Lab

LESSON = "09_distributed_gradients_ddp.py"
lesson = load_lesson(LESSON)

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(exit=1, shows=("FAIL  torch.equal(after_first[0], after_first[1]) = True",)),
    Promise(exit=1, shows=("FAIL  torch.allclose(mean_of_means, full_weight_grad) = True",)),
]

MUTANTS = [
    ("09_distributed_gradients_ddp.py", "    return slice(4 * rank, 4 * rank + 4)", "    return slice(0, 4)"),
    ("09_distributed_gradients_ddp.py", "    model.weight.grad /= dist.get_world_size()", "    model.weight.grad /= 1"),
    ("09_distributed_gradients_ddp.py", "        loss_1 = F.mse_loss(model(x[:2]), y[:2]) / 2\n        loss_1.backward()\n    after_first",
     "        loss_1 = F.mse_loss(model(x[:2]), y[:2])\n        loss_1.backward()\n    after_first"),
    ("09_distributed_gradients_ddp.py", "    with model.no_sync():  # forward and backward inside", "    if True:  # forward and backward inside"),
    ("09_distributed_gradients_ddp.py", "    prediction = model(x[:2])\n    with model.no_sync():\n",
     "    with model.no_sync():\n        prediction = model(x[:2])\n"),
    ("09_distributed_gradients_ddp.py", 'reduction="sum")  # the sum over this rank', 'reduction="mean")  # the sum over this rank'),
    ("09_distributed_gradients_ddp.py", "* dist.get_world_size() / len(X)", "/ len(X)"),
    ("09_distributed_gradients_ddp.py", "    torch.manual_seed(dist.get_rank())", "    torch.manual_seed(0)"),
    ("09_distributed_gradients_ddp.py", "    model.register_comm_hook(seen, record_then_all_reduce)", "    pass"),
    ("09_distributed_gradients_ddp.py", '                            if p is weight)', '                            if p is bias)'),
    ("09_distributed_gradients_ddp.py", "    bias.register_post_accumulate_grad_hook(lambda b: seen.append((\"bias.grad written\", None)))\n",
     ""),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 09 DDP
    # my_half(): off-by-one shard: 3 rows per rank (rows 0-2 and 4-6)
    ('09_distributed_gradients_ddp.py', 'return slice(4 * rank, 4 * rank + 4)', 'return slice(4 * rank, 4 * rank + 3)'),
    # ddp_gradient(): gathers the single-process oracle instead of DDP's gradient
    ('09_distributed_gradients_ddp.py', 'gathered = every_rank(weight_grad)', 'gathered = every_rank(full_weight_grad)'),
    # local_gradients(): the all-reduced sum is never divided by world_size: averaged = 2 × the full-batch gradient
    ('09_distributed_gradients_ddp.py', '    model.weight.grad /= dist.get_world_size()\n', '\n'),
    # uneven_shards(): the fix divides by this rank's rows, not all rows: still a mean of means, ×2
    ('09_distributed_gradients_ddp.py', 'fixed_loss = F.mse_loss(model(x), y, reduction="sum") * dist.get_world_size() / len(X)', 'fixed_loss = F.mse_loss(model(x), y, reduction="sum") * dist.get_world_size() / len(x)'),
    # how_ddp_enters_backward(): our node hook on bias's AccumulateGrad instead of weight's: node_is_weights False, events reordered
    ('09_distributed_gradients_ddp.py', 'weight_node = get_gradient_edge(weight).node', 'weight_node = get_gradient_edge(bias).node'),
]

# The test's own copy of the problem: 8 rows, w = [0.5, -1, 2], b = 0.1 (not read from the lesson).
X = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(8, 3)
Y = torch.arange(8, dtype=torch.float64).reshape(8, 1) / 4
W = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
B = 0.1
EXACT = {"rtol": 0, "atol": 1e-12}  # float64: the same sums in another order differ by ~1e-16


def one_process_gradient(rows: slice = slice(0, 8), reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(weight.grad, bias.grad): autograd on a plain model in this process, no process group."""
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(W)
        model.bias.fill_(B)
    F.mse_loss(model(X[rows]), Y[rows], reduction=reduction).backward()
    return model.weight.grad, model.bias.grad


def by_hand(rows: slice, reduction: str = "mean") -> torch.Tensor:
    """d/dw of the squared error over these rows: 2·Σ (x·w + b − y)·x, divided by n for the mean."""
    x, y = X[rows], Y[rows]
    summed = 2 * (x @ W.T + B - y).T @ x
    return summed / len(x) if reduction == "mean" else summed


HALVES = [slice(0, 4), slice(4, 8)]  # rank 0, rank 1

# Every test here shares the world below (two worker processes), or starts processes of its own:
# they run in make test-processes (pytest.ini), which keeps make test under its 3 minutes.
pytestmark = pytest.mark.processes


@pytest.fixture(scope="module", autouse=True)
def world():
    started = World.launch(size=2, device="cpu", title="test 09")
    yield started
    started.close()


def test_the_oracles_agree_with_each_other():
    assert torch.allclose(one_process_gradient()[0], by_hand(slice(0, 8)), **EXACT)
    assert torch.allclose(one_process_gradient(reduction="sum")[0], by_hand(slice(0, 8), "sum"), **EXACT)


def test_two_processes_and_the_broadcast_of_rank_0s_weights(lab):
    seen = lab.run(lesson.two_processes)
    assert len(seen.ranks) == 2
    assert [rank["dist.get_world_size()"] for rank in seen.ranks] == [2, 2]
    names = seen.ranks[0].names
    pids = [int(p) for p in names["pids"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # two workers, neither of them this process
    assert [int(p) for p in seen.ranks[1].names["pids"]] == pids  # both ranks gathered the same two
    before, after = names["before"], names["after"]
    assert not torch.equal(before[0], before[1])
    # Seeds 0 and 1, as torch.nn.Linear(3, 1) draws them in one process here.
    for rank in (0, 1):
        torch.manual_seed(rank)
        assert torch.equal(before[rank], torch.nn.Linear(3, 1, dtype=torch.float64).weight.detach())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[0])


def test_local_gradients_differ_and_their_mean_is_the_full_batch(lab):
    seen = lab.run(lesson.local_gradients)
    local = [seen["local[0]"], seen["local[1]"]]  # rank 0's checks: both ranks' gradients
    for rank in (0, 1):
        assert torch.allclose(local[rank], by_hand(HALVES[rank]), **EXACT)
        assert torch.allclose(seen.ranks[rank]["model.weight.grad"], one_process_gradient()[0], **EXACT)
    assert not torch.allclose(local[0], local[1])
    # What rank 0's checks expected travelled too (on the CPU): the mean gradient, by hand.
    expected = seen.expected["model.weight.grad"].value
    assert expected.device.type == "cpu" and torch.allclose(expected, one_process_gradient()[0].cpu(), **EXACT)


def test_ddp_gradient_equals_one_process_on_the_full_batch(lab):
    full_weight, full_bias = one_process_gradient()
    seen = lab.run(lesson.ddp_gradient)
    assert len(seen.ranks) == 2
    for rank, report in enumerate(seen.ranks):
        assert torch.allclose(report["weight_grad"], full_weight, **EXACT)
        assert torch.allclose(report["bias_grad"], full_bias, **EXACT)
        gathered = report.names["gathered"]
        assert torch.equal(gathered[0], gathered[1])
        # What was gathered is DDP's gradient itself (all_gather copies it bit for bit), not the
        # one-process oracle, which may differ from it in the last bit.
        assert torch.equal(gathered[rank], report["weight_grad"])


def test_no_sync_accumulation(lab):
    seen = lab.run(lesson.accumulate_with_no_sync)
    after_first = seen.ranks[0].names["after_first"]
    # Inside no_sync each rank kept its own: the mean over its first 2 rows, halved.
    assert torch.allclose(after_first[0], by_hand(slice(0, 2)) / 2, **EXACT)
    assert torch.allclose(after_first[1], by_hand(slice(4, 6)) / 2, **EXACT)
    assert len(seen.ranks) == 2
    for report in seen.ranks:
        assert torch.allclose(report["model.module.weight.grad"], one_process_gradient()[0], **EXACT)


def test_forward_outside_no_sync_still_synchronises(lab):
    seen = lab.run(lesson.forward_outside_no_sync)
    synchronised = (by_hand(slice(0, 2)) / 2 + by_hand(slice(4, 6)) / 2) / 2  # the mean over 2 ranks
    for rank in (0, 1):
        assert torch.allclose(seen.ranks[0].names["after_first"][rank], synchronised, **EXACT)
    assert torch.allclose(seen["after_first[0]"], synchronised, **EXACT)


def test_the_sum_trap(lab):
    full_sum = one_process_gradient(reduction="sum")[0]
    seen = lab.run(lesson.summed_loss)
    assert len(seen.ranks) == 2  # the world size DDP divides by
    for report in seen.ranks:
        weight_grad = report.names["weight_grad"]
        assert torch.allclose(weight_grad * 2, full_sum, **EXACT)
        assert torch.allclose(report["weight_grad * dist.get_world_size()"], full_sum, **EXACT)
        assert torch.allclose(weight_grad, (by_hand(HALVES[0], "sum") + by_hand(HALVES[1], "sum")) / 2,
                              **EXACT)
        assert not torch.allclose(weight_grad, full_sum)


def test_uneven_shards_and_the_fix(lab):
    full = one_process_gradient()[0]
    seen = lab.run(lesson.uneven_shards)
    assert len(seen.ranks) == 2
    for report in seen.ranks:
        # DDP's mean of a 3-row mean and a 5-row mean: rows weigh 1/6 and 1/10 instead of 1/8.
        weights = torch.tensor([1 / 6] * 3 + [1 / 10] * 5, dtype=torch.float64).reshape(8, 1)
        mean_of_means = 2 * (weights * (X @ W.T + B - Y)).T @ X
        assert torch.allclose(report["mean_of_means"], mean_of_means, **EXACT)
        assert (report["mean_of_means"] - full).abs().max() > 0.1
        assert torch.allclose(report["model.module.weight.grad"], full, **EXACT)  # the fix


def test_ddp_enters_backward_through_a_hook_on_accumulate_grad(lab):
    seen = lab.run(lesson.how_ddp_enters_backward)
    assert len(seen.ranks) == 2
    for rank, report in enumerate(seen.ranks):
        # 4 float64 numbers (32 bytes) fit in one bucket of the default 25 MiB: one all-reduce for both.
        assert report["in_bucket"] == ["weight", "bias"]
        # Linear's backward reaches bias's AccumulateGrad directly and weight's through the transpose of
        # weight, so bias.grad is written first; the bucket is complete when weight's is, and the
        # all-reduce starts from DDP's hook on weight's node, registered before ours.
        assert report["events"] == ["bias.grad written", "weight.grad written", "all-reduce starts",
                                    "our hook on weight's node"]
        assert report['all_reduce["node"] is weight_node'] is True
        assert torch.allclose(report["weight_grad_then"], by_hand(HALVES[rank]), **EXACT)
        assert torch.allclose(report["weight.grad"], one_process_gradient()[0], **EXACT)


def test_the_printed_code_is_the_lesson_source(lab):
    lab.run(lesson.accumulate_with_no_sync)
    printed = lab.stream.getvalue()
    for line in ("with model.no_sync():  # forward and backward inside", "    loss_1.backward()",
                 "loss_2.backward()  # outside no_sync", "after_first = every_rank(model.module.weight.grad.clone())"):
        assert f"\n    {line}" in printed, line
    assert "lab.check" not in printed
    assert re.search(r"^  ok  rank 1: 2/2 checks match", printed, re.M), printed


@pytest.mark.skipif(os.environ.get(FORCE_AGREE_ENV) == "1", reason="checks forced to agree")
def test_a_check_that_fails_on_rank_1_alone_fails_the_observation(tmp_path):
    probe_file = tmp_path / "probe_09.py"
    probe_file.write_text(
        "import torch.distributed as dist\n"
        "from tensor_features.lab.distributed import on_every_rank\n\n\n"
        "@on_every_rank\n"
        "def only_rank_0_agrees(lab):\n"
        '    """A check that holds on rank 0 only"""\n'
        "    lab.check(dist.get_rank(), 0, 'true on rank 0')\n"
    )
    probe = load_lesson(probe_file)
    lab = quiet_lab()
    probe.only_rank_0_agrees(lab)
    assert lab.passed == 1 and lab.failed == ["[0] rank 1: 0/1 checks match"], lab.stream.getvalue()
    assert "FAIL  rank 1: 0/1 checks match" in lab.stream.getvalue()


@pytest.mark.processes
def test_a_rank_that_raises_ends_the_run_with_one_line(tmp_path):
    source = (ROOT / LESSON).read_text()
    first_line = "    pids = every_rank(torch.tensor(os.getpid()))\n"
    assert source.count(first_line) == 1
    broken = tmp_path / LESSON
    broken.write_text(source.replace(first_line, '    if dist.get_rank() == 1:\n        raise ValueError("rank 1 gives up")\n'
                                     + first_line))
    result = run_script(str(broken), "--device", "cpu", timeout=120)  # a hang fails here, by the timeout
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "09 · DDP gradients: rank 1 failed in [1] two_processes: ValueError: rank 1 gives up"], result.stderr
    assert "[1] Two processes" in result.stdout and "checks match across" not in result.stdout


# Beside the lesson, not in it: at exit each rank writes down the threads it still has (Linux names
# them in /proc). A sitecustomize module on PYTHONPATH runs in every process Python starts.
THREADS_AT_EXIT = """
import atexit
import os


def write_threads():
    if "RANK" in os.environ and os.path.isdir("/proc/self/task"):
        names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
        with open(f"threads{os.environ['RANK']}.txt", "w") as out:
            out.write("\\n".join(names))


atexit.register(write_threads)
"""


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed next to this Python")
@pytest.mark.processes
def test_the_unchanged_lesson_runs_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(THREADS_AT_EXIT)
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(ROOT / LESSON), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[:4000]
    out = result.stdout
    assert out.count("09 · DDP gradients") == 1  # rank 0's header only
    counted = re.search(r"^(\d+)/\1 checks match across 8 observations\.$", out, re.M)
    assert counted and int(counted[1]) > 0, out[-2000:]
    assert len(re.findall(r"^  ok  rank 1: ", out, re.M)) == 8
    # world.close() freed the group, so gloo's threads were joined before the interpreter finalized
    # (a group kept alive leaves one that may need the GIL then: SIGABRT after the last line).
    for rank in (0, 1):
        threads = tmp_path / f"threads{rank}.txt"
        if not threads.exists():
            pytest.skip("no /proc/self/task to read thread names from")
        names = threads.read_text().split("\n")
        assert "python" in names and [name for name in names if "gloo" in name] == [], names


# -- RANK, WORLD_SIZE, ... set by hand --------------------------------------------------------------

def live_lab() -> Lab:
    """The lab of a lesson run as a script (World.start acts only for a live one), printing into a buffer."""
    return Lab("09 · test", "cpu", stream=io.StringIO())


def set_by_hand(monkeypatch, **variables: str) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "_current", None)  # World.start would close this file's world first


def start_stops_with_one_line(capfd) -> str:
    with pytest.raises(SystemExit) as stopped:
        World.start(live_lab(), size=2)
    out, err = capfd.readouterr()
    assert stopped.value.code == 2 and err.count("\n") == 1 and out == "", err
    assert not torch.distributed.is_initialized()
    return err


@pytest.mark.parametrize("variables, said", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "RANK=0 and WORLD_SIZE=2 are set, but MASTER_ADDR and MASTER_PORT are not"),
    ({"RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2: the ranks are 0 to 1"),
    ({"RANK": "0", "WORLD_SIZE": "3"}, "this lesson is written for 2 processes; WORLD_SIZE is 3"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}, "MASTER_PORT=0 must be at least 1"),
])
def test_distributed_variables_that_cannot_work_stop_the_lesson_with_one_line(variables, said, monkeypatch, capfd):
    set_by_hand(monkeypatch, **variables)
    assert f": error: {said}" in start_stops_with_one_line(capfd)


@pytest.mark.processes
def test_a_peer_that_never_comes_stops_the_lesson_after_the_join_timeout(monkeypatch, capfd):
    # join_group (tensor_features/ranks.py) reads its JOIN_TIMEOUT: 40 s in a lesson run
    monkeypatch.setattr(ranks, "JOIN_TIMEOUT", timedelta(seconds=2))
    port = free_port()  # a port nobody listens on
    set_by_hand(monkeypatch, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    said = start_stops_with_one_line(capfd)
    assert f": error: rank 0 of WORLD_SIZE=2 could not form the process group at 127.0.0.1:{port} within 2 s (" in said
    assert "1/2 clients joined" in said


def test_only_rank_0_prints_leaves_a_bad_rank_to_world_start(monkeypatch, capsys):
    # The lesson's first line, before World.start: it reads RANK too, and must not be the one to fail.
    set_by_hand(monkeypatch, RANK="abc", WORLD_SIZE="2")
    with distributed.only_rank_0_prints():
        print("header")
    assert capsys.readouterr().out == "header\n"
    set_by_hand(monkeypatch, RANK="1", WORLD_SIZE="2")
    with distributed.only_rank_0_prints():
        print("header")
    assert capsys.readouterr().out == ""
