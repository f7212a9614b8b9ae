"""09 DDP: every value the lesson returns, from both ranks, against oracles written here: the
gradient of one process on the full batch (autograd on a plain model in this process) and the
mean-squared-error gradient by hand, (2/n)·Σ (x·w + b − y)·x, for each shard; the sum and
uneven-shard traps by that arithmetic; a disagreement on rank 1 alone, and a rank that raises,
each ending the run as promised (exit 1, one line), under a timeout.

The observations run in one world of 2 worker processes (gloo, CPU) that this file starts once.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, load_lesson, quiet_lab, run_script
from tensor_features.distributed import World
from tensor_features.lab import FORCE_AGREE_ENV

LESSON = "09_distributed_gradients_ddp.py"
lesson = load_lesson(LESSON)

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
    ("09_distributed_gradients_ddp.py", 'all_reduce["grads"]) if p is weight)', 'all_reduce["grads"]) if p is bias)'),
    ("09_distributed_gradients_ddp.py", "    bias.register_post_accumulate_grad_hook(lambda b: seen.append((\"bias.grad written\", None)))\n",
     ""),
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


@pytest.fixture(scope="module", autouse=True)
def world():
    started = World.launch(size=2, device="cpu", title="test 09")
    yield started
    started.close()


def test_the_oracles_agree_with_each_other():
    assert torch.allclose(one_process_gradient()[0], by_hand(slice(0, 8)), **EXACT)
    assert torch.allclose(one_process_gradient(reduction="sum")[0], by_hand(slice(0, 8), "sum"), **EXACT)


def test_two_processes_and_the_broadcast_of_rank_0s_weights(lab):
    ranks = lesson.two_processes(lab)
    assert len(ranks) == 2
    pids = [int(p) for p in ranks[0]["pids"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # two workers, neither of them this process
    before, after = ranks[0]["before"], ranks[0]["after"]
    assert not torch.equal(before[0], before[1])
    # Seeds 0 and 1, as torch.nn.Linear(3, 1) draws them in one process here.
    for rank in (0, 1):
        torch.manual_seed(rank)
        assert torch.equal(before[rank], torch.nn.Linear(3, 1, dtype=torch.float64).weight.detach())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[0])


def test_local_gradients_differ_and_their_mean_is_the_full_batch(lab):
    ranks = lesson.local_gradients(lab)
    local = ranks[0]["local"]
    for rank in (0, 1):
        assert torch.allclose(local[rank], by_hand(HALVES[rank]), **EXACT)
        assert torch.allclose(ranks[rank]["averaged"], one_process_gradient()[0], **EXACT)
    assert not torch.allclose(local[0], local[1])


def test_ddp_gradient_equals_one_process_on_the_full_batch(lab):
    full_weight, full_bias = one_process_gradient()
    for report in lesson.ddp_gradient(lab):
        assert torch.allclose(report["weight_grad"], full_weight, **EXACT)
        assert torch.allclose(report["bias_grad"], full_bias, **EXACT)
        assert torch.equal(report["every_rank"][0], report["every_rank"][1])


def test_no_sync_accumulation(lab):
    ranks = lesson.accumulate_with_no_sync(lab)
    after_first = ranks[0]["after_first"]
    # Inside no_sync each rank kept its own: the mean over its first 2 rows, halved.
    assert torch.allclose(after_first[0], by_hand(slice(0, 2)) / 2, **EXACT)
    assert torch.allclose(after_first[1], by_hand(slice(4, 6)) / 2, **EXACT)
    for report in ranks:
        assert torch.allclose(report["weight_grad"], one_process_gradient()[0], **EXACT)


def test_forward_outside_no_sync_still_synchronises(lab):
    ranks = lesson.forward_outside_no_sync(lab)
    synchronised = (by_hand(slice(0, 2)) / 2 + by_hand(slice(4, 6)) / 2) / 2  # the mean over 2 ranks
    for rank in (0, 1):
        assert torch.allclose(ranks[0]["after_first"][rank], synchronised, **EXACT)


def test_the_sum_trap(lab):
    full_sum = one_process_gradient(reduction="sum")[0]
    for report in lesson.summed_loss(lab):
        assert report["world_size"] == 2
        assert torch.allclose(report["weight_grad"] * 2, full_sum, **EXACT)
        assert torch.allclose(report["weight_grad"], (by_hand(HALVES[0], "sum") + by_hand(HALVES[1], "sum")) / 2,
                              **EXACT)
        assert not torch.allclose(report["weight_grad"], full_sum)


def test_uneven_shards_and_the_fix(lab):
    full = one_process_gradient()[0]
    for report in lesson.uneven_shards(lab):
        # DDP's mean of a 3-row mean and a 5-row mean: rows weigh 1/6 and 1/10 instead of 1/8.
        weights = torch.tensor([1 / 6] * 3 + [1 / 10] * 5, dtype=torch.float64).reshape(8, 1)
        mean_of_means = 2 * (weights * (X @ W.T + B - Y)).T @ X
        assert torch.allclose(report["mean_of_means"], mean_of_means, **EXACT)
        assert (report["mean_of_means"] - full).abs().max() > 0.1
        assert torch.allclose(report["fixed"], full, **EXACT)


def test_ddp_enters_backward_through_a_hook_on_accumulate_grad(lab):
    ranks = lesson.how_ddp_enters_backward(lab)
    for rank, report in enumerate(ranks):
        # 4 float64 numbers (32 bytes) fit in one bucket of the default 25 MiB: one all-reduce for both.
        assert report["in_bucket"] == ["weight", "bias"]
        # Linear's backward reaches bias's AccumulateGrad directly and weight's through the transpose of
        # weight, so bias.grad is written first; the bucket is complete when weight's is, and the
        # all-reduce starts from DDP's hook on weight's node, registered before ours.
        assert report["events"] == ["bias.grad written", "weight.grad written", "all-reduce starts",
                                    "our hook on weight's node"]
        assert report["node_is_weights"] is True
        assert torch.allclose(report["grad_at_all_reduce"], by_hand(HALVES[rank]), **EXACT)
        assert torch.allclose(report["weight_grad"], one_process_gradient()[0], **EXACT)


def test_the_printed_code_is_the_lesson_source(lab):
    lesson.accumulate_with_no_sync(lab)
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
        "from tensor_features.distributed import on_every_rank\n\n\n"
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


def test_a_rank_that_raises_ends_the_run_with_one_line(tmp_path):
    source = (ROOT / LESSON).read_text()
    first_line = "    pids = every_rank(torch.tensor(os.getpid(), device=lab.device))\n"
    assert source.count(first_line) == 1
    broken = tmp_path / LESSON
    broken.write_text(source.replace(first_line, '    if dist.get_rank() == 1:\n        raise ValueError("rank 1 gives up")\n'
                                     + first_line))
    result = run_script(str(broken), "--device", "cpu", timeout=120)  # a hang fails here, by the timeout
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "09 · DDP gradients: rank 1 failed in [1] two_processes: ValueError: rank 1 gives up"], result.stderr
    assert "[1] Two processes" in result.stdout and "checks match across" not in result.stdout


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed next to this Python")
def test_the_unchanged_lesson_runs_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))

    def run():
        return subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(ROOT / LESSON), "--device", "cpu"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    result = run()
    if result.returncode != 0 and re.search(r"^(\d+)/\1 checks match across 8 observations\.$", result.stdout, re.M):
        # Once in about forty runs on a loaded 2-core machine, rank 1 was killed by SIGABRT (torchrun:
        # "exitcode: -6") after every check had matched: in gloo's teardown, not in the lesson. Such a
        # run is tried once more; a lesson that fails its checks, or fails twice, still fails here.
        first = result
        result = run()
        assert result.returncode == 0, first.stderr[:4000] + "\n--- second run ---\n" + result.stderr[:4000]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[:4000]
    out = result.stdout
    assert out.count("09 · DDP gradients") == 1  # rank 0's header only
    counted = re.search(r"^(\d+)/\1 checks match across 8 observations\.$", out, re.M)
    assert counted and int(counted[1]) > 0, out[-2000:]
    assert len(re.findall(r"^  ok  rank 1: ", out, re.M)) == 8
