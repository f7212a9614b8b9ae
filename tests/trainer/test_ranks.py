"""tensor_features/ranks.py's placement of a rank, by hand: which backend, which device. The GPU
count is faked (this test runs without a GPU); the rule is PyTorch's backend table (nccl needs a
GPU per rank on the machine; gloo computes on the CPU)."""

import torch

from tensor_features.ranks import backend_for, rank_device


# Written by a tester who had not read these tests, from the trainer's code alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ranks.py: backend_for wants more GPUs than ranks: with exactly as many GPUs as ranks on the machine it picks gloo (ranks on the CPU) instead of nccl
    ('tensor_features/ranks.py', 'torch.cuda.device_count() >= ranks_on_this_machine', 'torch.cuda.device_count() > ranks_on_this_machine'),
    # ranks.py: rank_device forgets the local rank: under nccl every rank gets torch.device('cuda') (GPU 0), not cuda:local_rank
    ('tensor_features/ranks.py', 'return torch.device("cuda", local_rank) if backend == "nccl"', 'return torch.device("cuda") if backend == "nccl"'),
]


def test_nccl_when_every_rank_on_the_machine_has_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert backend_for(torch.device("cuda"), 2) == "nccl"  # exactly as many GPUs as ranks
    assert backend_for(torch.device("cuda"), 3) == "gloo"
    assert backend_for(torch.device("cpu"), 1) == "gloo"


def test_under_nccl_each_rank_has_its_own_gpu():
    assert rank_device(torch.device("cuda"), "nccl", 1) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda"), "gloo", 1) == torch.device("cpu")
