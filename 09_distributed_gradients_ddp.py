"""09 · DDP gradients: two processes, each with half the batch, end with the full batch's
gradient.

Two processes (ranks 0 and 1) hold the same float64 linear model and half of an 8-row batch
each, and DistributedDataParallel averages their gradients. Then the places where that
arithmetic surprises people, and how DDP gets into backward() at all.

`python 09_distributed_gradients_ddp.py` starts its own two worker processes
(torch.multiprocessing, spawn); `torchrun --standalone --nproc-per-node 2
09_distributed_gradients_ddp.py` runs the same observations in torchrun's two processes. The
ranks compute on the CPU and talk through gloo; when --device picks CUDA and there is a GPU for
each rank, they compute on their GPUs and talk through nccl. [1] says which. Only rank 0 prints;
every rank's checks count.
"""

# %% Setup
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.graph import get_gradient_edge
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from tensor_features.lab.distributed import World, on_every_rank, only_rank_0_prints
from tensor_features.lab import Lab, Try

with only_rank_0_prints():  # under torchrun, the other ranks' labs print into a buffer
    lab = Lab.start("09 · DDP gradients", __doc__, __name__)
# Under torchrun: join the process group it prepared. Otherwise: start 2 worker processes that
# form one; each observation below then runs in both of them, and rank 0's lines come back here.
world = World.start(lab, size=2)

# The batch: 8 rows of 3 features and one target, in float64 so that differences are rounding
# only.
X = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(8, 3)
Y = torch.arange(8, dtype=torch.float64).reshape(8, 1) / 4
WEIGHT, BIAS = [[0.5, -1.0, 2.0]], 0.1


def toy_model() -> torch.nn.Linear:
    """y = x·w + b with w = [0.5, -1, 2] and b = 0.1, the same on every rank; on the default
    device (the rank's, inside an observation)."""
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(WEIGHT))
        model.bias.fill_(BIAS)
    return model


def my_half() -> slice:
    """Rows 0-3 on rank 0, rows 4-7 on rank 1."""
    rank = dist.get_rank()
    return slice(4 * rank, 4 * rank + 4)


def shard(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """These rows of the batch, moved to the default device (X and Y were made on the CPU)."""
    device = torch.get_default_device()
    return X[rows].to(device), Y[rows].to(device)


def full_batch_gradient(reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: one process, no DDP, all 8 rows, the same weights; (weight.grad, bias.grad)."""
    model = toy_model()
    x, y = shard(slice(0, 8))
    F.mse_loss(model(x), y, reduction=reduction).backward()
    return model.weight.grad, model.bias.grad


def mse_gradient(rows: slice) -> torch.Tensor:
    """d/dw of the mean squared error over these rows, by hand: (2/n)·Σ (x·w + b − y)·x."""
    x, y = X[rows], Y[rows]
    weight = X.new_tensor(WEIGHT)  # beside X, on the CPU, whatever the default device
    residual = x @ weight.T + BIAS - y
    return 2 / len(x) * residual.T @ x


def every_rank(tensor: torch.Tensor) -> list[torch.Tensor]:
    """[rank 0's tensor, rank 1's tensor]: an all_gather, so that rank 0 can show and check
    both."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return gathered


# %% [1] Two processes, one group
# Each rank is a process of its own, and DistributedDataParallel's constructor starts every rank
# from rank 0's weights.
@on_every_rank
def two_processes(lab: Lab) -> None:
    """Two processes in one group; DDP(model) starts every rank from rank 0's weights"""
    pids = every_rank(torch.tensor(os.getpid()))
    lab.note(f"backend {dist.get_backend()}; rank {dist.get_rank()} computes on {lab.device}")
    lab.check(dist.get_world_size(), 2, "two processes joined the group")
    lab.check(int(pids[0]) != int(pids[1]), True,
              "each rank is an operating-system process of its own")
    torch.manual_seed(dist.get_rank())  # a different random start on each rank
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    before = every_rank(model.weight.detach())
    # The constructor broadcasts rank 0's parameters to every rank (init_sync=True, the default;
    # pytorch/pytorch docs/source/notes/ddp.md, "Construction").
    # device_ids=None: required for a CPU module, allowed for one GPU (DDP's docstring)
    ddp_model = DDP(model)
    after = every_rank(ddp_model.module.weight.detach())
    lab.check(torch.equal(before[0], before[1]), False, "seeds 0 and 1 drew different weights")
    lab.check(torch.equal(after[1], before[0]), True, "rank 1 now holds rank 0's weights")


lab.run(two_processes)


# %% [2] Before the all-reduce
# Before the all-reduce the two ranks' gradients differ.
@on_every_rank
def local_gradients(lab: Lab) -> None:
    """Before the all-reduce: each half gives its own gradient; their mean is the full batch's"""
    x, y = shard(my_half())
    model = toy_model()  # a plain model: no DDP yet
    loss = F.mse_loss(model(x), y)  # the mean over this rank's 4 rows
    loss.backward()
    local = every_rank(model.weight.grad.clone())
    lab.check(local[0], mse_gradient(slice(0, 4)), "rank 0, rows 0-3: (2/4)·Σ (x·w + b − y)·x")
    lab.check(local[1], mse_gradient(slice(4, 8)), "rank 1, rows 4-7: a different gradient")
    dist.all_reduce(model.weight.grad)  # the sum over the ranks, in place, on every rank
    model.weight.grad /= dist.get_world_size()
    full_weight_grad, _ = full_batch_gradient()
    lab.check(model.weight.grad, full_weight_grad,
              "(4-row mean + 4-row mean) / 2 = the 8-row mean", rtol=0, atol=1e-12)


lab.run(local_gradients)


# %% [3] DDP does the all-reduce inside backward()
# DistributedDataParallel's backward averages the ranks' gradients, and the average equals the
# gradient one process computes from all 8 rows.
@on_every_rank
def ddp_gradient(lab: Lab) -> None:
    """DDP: loss.backward() all-reduces, and every rank holds the full-batch gradient"""
    x, y = shard(my_half())
    model = DDP(toy_model())
    loss = F.mse_loss(model(x), y)
    loss.backward()  # DDP averages the gradients over the ranks during this call
    weight_grad, bias_grad = model.module.weight.grad, model.module.bias.grad
    full_weight_grad, full_bias_grad = full_batch_gradient()
    lab.check(weight_grad, full_weight_grad, "one process, all 8 rows, the same weights",
              rtol=0, atol=1e-12)
    lab.check(bias_grad, full_bias_grad, "the bias too", rtol=0, atol=1e-12)
    largest_difference = (weight_grad - full_weight_grad).abs().max().item()
    lab.check(largest_difference, 0.0, "equal up to float64 rounding", atol=1e-12)
    gathered = every_rank(weight_grad)
    lab.check(torch.equal(gathered[0], gathered[1]), True,
              "the same gradient on both ranks, bit for bit")


lab.run(ddp_gradient)


# %% [4] Accumulation with no_sync()
# The first place where that arithmetic surprises people: accumulating micro-batches with
# no_sync().
@on_every_rank
def accumulate_with_no_sync(lab: Lab) -> None:
    ("Accumulation with no_sync(): two micro-batches of 2 rows, each loss / 2, equal the "
     "full batch")
    x, y = shard(my_half())
    model = DDP(toy_model())
    with model.no_sync():  # forward and backward inside: the gradient stays on this rank
        loss_1 = F.mse_loss(model(x[:2]), y[:2]) / 2
        loss_1.backward()
    after_first = every_rank(model.module.weight.grad.clone())
    loss_2 = F.mse_loss(model(x[2:]), y[2:]) / 2
    loss_2.backward()  # outside no_sync: this backward all-reduces the accumulated gradient
    lab.check(torch.equal(after_first[0], after_first[1]), False,
              "after the first micro-batch, each rank had its own")
    full_weight_grad, _ = full_batch_gradient()
    lab.check(model.module.weight.grad, full_weight_grad,
              "2-row mean / 2 + 2-row mean / 2 = the 4-row mean; DDP's mean over ranks = the "
              "8-row mean", rtol=0, atol=1e-12)


lab.run(accumulate_with_no_sync)


# %% [5] The forward outside no_sync()
# What happens when the forward runs outside no_sync() and only the backward inside it.
@on_every_rank
def forward_outside_no_sync(lab: Lab) -> None:
    """The forward outside no_sync(): the backward inside it synchronises all the same"""
    x, y = shard(my_half())
    model = DDP(toy_model())
    # DDP reads the no_sync flag in forward(), where it prepares the reducer for this graph's
    # backward (distributed.py: prepare_for_backward); the docstring of no_sync warns about it.
    prediction = model(x[:2])
    with model.no_sync():
        loss_1 = F.mse_loss(prediction, y[:2]) / 2
        loss_1.backward()
    after_first = every_rank(model.module.weight.grad.clone())
    lab.check(torch.equal(after_first[0], after_first[1]), True,
              "the ranks already agree: the all-reduce ran")
    lab.check(after_first[0], (mse_gradient(slice(0, 2)) + mse_gradient(slice(4, 6))) / 2 / 2,
              "(rows 0-1 mean + rows 4-5 mean) / 2 ranks, / 2 for the micro-batch")


lab.run(forward_outside_no_sync)


# %% [6] The sum trap
# A summed loss: DDP's gradient is world_size times too small.
@on_every_rank
def summed_loss(lab: Lab) -> None:
    """The sum trap: with reduction="sum", DDP's gradient is world_size times too small"""
    x, y = shard(my_half())
    model = DDP(toy_model())
    loss = F.mse_loss(model(x), y, reduction="sum")  # the sum over this rank's 4 rows
    loss.backward()  # DDP still divides by the number of ranks
    weight_grad = model.module.weight.grad
    full_sum_weight_grad, _ = full_batch_gradient(reduction="sum")
    lab.check(torch.allclose(weight_grad, full_sum_weight_grad), False,
              "DDP divided the summed gradient by 2 ranks; one process summing all 8 rows "
              "divides by nothing")
    lab.check(weight_grad * dist.get_world_size(), full_sum_weight_grad,
              "× world_size: the single-process sum", rtol=0, atol=1e-12)


lab.run(summed_loss)


# %% [7] Uneven shards
# Shards of 3 and 5 rows, whose mean of means is not the mean (and the fix).
@on_every_rank
def uneven_shards(lab: Lab) -> None:
    """Uneven shards, 3 and 5 rows: DDP's mean of the two means is not the full-batch mean"""
    rows = slice(0, 3) if dist.get_rank() == 0 else slice(3, 8)
    x, y = shard(rows)
    model = DDP(toy_model())
    F.mse_loss(model(x), y).backward()  # each rank: the mean over its own rows
    mean_of_means = model.module.weight.grad.clone()
    full_weight_grad, _ = full_batch_gradient()
    lab.check(mean_of_means, (mse_gradient(slice(0, 3)) + mse_gradient(slice(3, 8))) / 2,
              "rows 0-2 weigh 1/2·1/3 = 1/6 each, rows 3-7 1/2·1/5 = 1/10 each")
    lab.check(full_weight_grad, mse_gradient(slice(0, 8)), "the full batch weighs every row 1/8")
    lab.check(torch.allclose(mean_of_means, full_weight_grad), False, "so the two differ")
    # The fix: sum over this rank's rows, × world_size / all rows; DDP's mean then gives 1/8 a
    # row.
    # (Equal shards, as in [3], need no fix.)
    model.zero_grad()
    fixed_loss = F.mse_loss(model(x), y, reduction="sum") * dist.get_world_size() / len(X)
    fixed_loss.backward()
    lab.check(model.module.weight.grad, full_weight_grad, "the full-batch mean, with 3 and 5 rows",
              rtol=0, atol=1e-12)


lab.run(uneven_shards)


# %% [8] How DDP gets into backward()
# How DDP gets into backward() at all: a hook on each parameter's AccumulateGrad node, and one
# all-reduce per bucket of gradients, started once the bucket's last gradient is written and the
# buckets before it have started (DDP goes in bucket order; reducer.cpp, mark_bucket_ready:
# "Buckets are reduced in sequence").
def record_then_all_reduce(seen: list,
                           bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: note the running autograd node, the bucket's parameters and
    their .grad at this moment, then all-reduce as DDP would."""
    parameters = bucket.parameters()
    node = torch._C._current_autograd_node()  # private API: the running node
    seen.append(("all-reduce starts", {"node": node, "parameters": parameters,
                                       "grads": [p.grad.clone() for p in parameters]}))
    # Divide by world_size, all-reduce: the same result as no hook at all (default_hooks.py).
    return allreduce_hook(None, bucket)


@on_every_rank
def how_ddp_enters_backward(lab: Lab) -> None:
    ("How DDP gets into backward(): a hook on each parameter's AccumulateGrad node, "
     "an all-reduce per bucket")
    x, y = shard(my_half())
    # DDP(...) makes a Reducer: the C++ object that groups the parameters' gradients into buckets
    # and all-reduces one bucket at a time. It hooks each parameter's AccumulateGrad node;
    # backward() itself is out of DDP's control (pytorch/pytorch docs/source/notes/ddp.md,
    # "Construction" and "Backward Pass"; reducer.cpp: grad_accumulator->add_post_hook).
    model = DDP(toy_model())
    weight, bias = model.module.weight, model.module.bias
    weight_node = get_gradient_edge(weight).node  # the AccumulateGrad node that writes weight.grad
    seen = []
    bias.register_post_accumulate_grad_hook(lambda b: seen.append(("bias.grad written", None)))
    weight.register_post_accumulate_grad_hook(lambda w: seen.append(("weight.grad written", None)))
    weight_node.register_hook(
        lambda grad_inputs, grad_outputs: seen.append(("our hook on weight's node", None)))
    # DDP calls it once per bucket, with `seen` as its state
    model.register_comm_hook(seen, record_then_all_reduce)
    F.mse_loss(model(x), y).backward()
    events = [event for event, _ in seen]
    all_reduce = dict(seen)["all-reduce starts"]
    in_bucket = [name for name, p in model.module.named_parameters()
                 if any(p is q for q in all_reduce["parameters"])]
    lab.check(in_bucket, ["weight", "bias"],
              "one bucket holds both parameters: one all-reduce for the two")
    lab.check(events, ["bias.grad written", "weight.grad written", "all-reduce starts",
                       "our hook on weight's node"],
              "the bucket's all-reduce starts once its last gradient, weight's, is written")
    lab.check(all_reduce["node"] is weight_node, True,
              "so it starts from DDP's hook on weight's AccumulateGrad node")
    # Ours ran after it: DDP registered its hook in DDP(...), earlier than ours, and a node's hooks
    # run in registration order (pytorch/pytorch docs/source/notes/autograd.md, "Backward Hooks
    # execution").
    weight_grad_then = next(g for p, g in zip(all_reduce["parameters"], all_reduce["grads"])
                            if p is weight)
    lab.check(weight_grad_then, mse_gradient(my_half()),
              "weight.grad as the all-reduce started: still this rank's own")
    full_weight_grad, _ = full_batch_gradient()
    # The Reducer queued a callback that waits for the all-reduce and writes the mean into .grad
    # before backward() returns (notes/ddp.md, "Backward Pass"; reducer.cpp: queue_callback).
    lab.check(weight.grad, full_weight_grad,
              "when backward() returned, the mean over the ranks was in place", rtol=0, atol=1e-12)


lab.run(how_ddp_enters_backward)


# %% The end
TRIES = [
    Try("the first backward all-reduces too, so the ranks already agree after it and that check "
        "fails",
        edit=("with model.no_sync():  # forward and backward inside",
              "if True:  # forward and backward inside"),
        where=accumulate_with_no_sync),
    Try("shards of 4 and 4 rows: the mean of the means is the full-batch mean, so the checks for "
        "3 and 5 rows fail",
        edit=("slice(0, 3) if dist.get_rank() == 0 else slice(3, 8)",
              "slice(0, 4) if dist.get_rank() == 0 else slice(4, 8)"),
        where=uneven_shards),
]
world.close()
lab.finish(TRIES)
