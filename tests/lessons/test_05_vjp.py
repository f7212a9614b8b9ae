"""05 vjp: every value the lesson's checks saw (and the locals its observations left), against
an oracle written here: vᵀ diag(2x) and vᵀW by
hand, float64 central differences of the tanh layer, their running sums for the loop traps, the
ops each way runs counted from the shapes (the bmm's operand read back as a stride-0 expand of the
forward's own W, transposed; vmap(vjp)'s tanh_backward fed the unit vectors and its mm fed that
output and W), the fallback warnings by substring, and the per-sample trap against a full Jacobian
of the model. TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support import Promise, load_lesson, run_in_process

lesson = load_lesson("05_gradient_computation_vjp.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(shows=("grad loop, 64×64",)),
    Promise(exit=1, shows=("FAIL  train mode",)),
    Promise(exit=1, shows=("FAIL  fixed",)),
]

MUTANTS = [
    ("05_gradient_computation_vjp.py", "y.backward(torch.tensor([1.0, 0.5]))",
     "y.backward(torch.tensor([0.5, 1.0]))"),
    ("05_gradient_computation_vjp.py", "    y = W @ x\n", "    y = W.T @ x\n"),
    ("05_gradient_computation_vjp.py", "        x.grad.zero_()  # reset in place", "        x.grad = None  # reset in place"),
    ("05_gradient_computation_vjp.py", "            self.counts[key] = self.counts.get(key, 0) + 1", "            self.counts[key] = 1"),
    ("05_gradient_computation_vjp.py", 'COUNTED = ("mv", "mm", "bmm", "tanh_backward")', 'COUNTED = ("mv", "mm", "tanh_backward")'),
    ("05_gradient_computation_vjp.py", "        jacobians[name] = method(layer, x)", "        jacobians[name] = 2 * method(layer, x)"),
    ("tensor_features/utils.py", "        torch.set_num_threads(threads)\n", "        pass\n"),
    ("05_gradient_computation_vjp.py", "    return vmap(vjp_fn)(basis)[0]", "    return vmap(vjp_fn)(basis)[0].T"),
    ("05_gradient_computation_vjp.py", "    analytic = (1 - layer(x) ** 2)[:, None] * weight", "    analytic = (1 - layer(x) ** 2)[None, :] * weight"),
    ("05_gradient_computation_vjp.py", "        x.grad = None  # the next backward stores a new tensor\n", ""),
    ("05_gradient_computation_vjp.py", "        no_reset.append(x.grad.clone())", "        no_reset.append(x.grad.clone())\n        x.grad = None"),
    ("05_gradient_computation_vjp.py", "torch.autograd.grad(outputs[i], inputs, retain_graph=True)[0][i]",
     "torch.autograd.grad(outputs.sum(), inputs, retain_graph=True)[0][i]"),
    ("05_gradient_computation_vjp.py", 'model.train(mode == "train")', 'model.train(mode == "eval")'),
    # the same Jacobian, but tanh_backward no longer gets the unit vectors themselves
    ("05_gradient_computation_vjp.py", "    basis = torch.eye(y.numel())\n    return vmap(vjp_fn)(basis)[0]",
     "    basis = 2 * torch.eye(y.numel())\n    return vmap(vjp_fn)(basis)[0] / 2"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 05 vjp
    # original_example(): transposed W: y = Wᵀx, x.grad = Wv = [2, 5] not vᵀW = [2.5, 4]
    ('05_gradient_computation_vjp.py', '    y = W @ x\n', '    y = W.T @ x\n'),
    # jacobian_by_loop(): rows stacked as columns: the loop's Jacobian is Jᵀ
    ('05_gradient_computation_vjp.py', '    return torch.stack(rows)\n', '    return torch.stack(rows, dim=1)\n'),
    # loop_traps(): the "no reset" rows are not cloned: every row is the final cumulative sum
    ('05_gradient_computation_vjp.py', 'no_reset.append(x.grad.clone())', 'no_reset.append(x.grad)'),
    # per_sample_trap(): the "per-sample" gradient is the column sum (the sum trick again): train gap 0
    ('05_gradient_computation_vjp.py', 'torch.autograd.grad(outputs[i], inputs, retain_graph=True)[0][i] for i in range(batch)', 'torch.autograd.grad(outputs.sum(), inputs, retain_graph=True)[0][i] for i in range(batch)'),
    # tanh_layer() oracle scales columns instead of rows: analytic = W diag(1 - y²)
    ('05_gradient_computation_vjp.py', 'analytic = (1 - layer(x) ** 2)[:, None] * weight', 'analytic = (1 - layer(x) ** 2)[None, :] * weight'),
]


def finite_difference_jacobian(size: int, device) -> torch.Tensor:
    """The oracle, built independently: central differences of the same seeded layer, differenced in float64."""
    with torch.device(device):  # tanh_layer makes its tensors on the default device
        layer, x, _ = lesson.tanh_layer(size)
    layer64 = lambda v: layer(v.float()).double()  # noqa: E731 - the layer's weights are float32
    x = x.double()
    h = 1e-3
    columns = [(layer64(x + h * e) - layer64(x - h * e)) / (2 * h)
               for e in torch.eye(size, dtype=torch.float64, device=x.device)]
    return torch.stack(columns, dim=1)


def test_original_example_is_v_transpose_j(lab):
    original, not_symmetric = lab.run(lesson.original_example).every("x.grad")
    jacobian = torch.diag(2 * torch.tensor([1.0, 2.0]))  # d(x²)/dx at x = [1, 2]
    assert torch.allclose(original.cpu(), torch.tensor([1.0, 1.0]) @ jacobian)
    w = [[1.0, 2.0], [3.0, 4.0]]  # d(W x)/dx = W
    v = [1.0, 0.5]
    v_transpose_w = [sum(v[i] * w[i][j] for i in range(2)) for j in range(2)]
    w_v = [sum(w[i][j] * v[j] for j in range(2)) for i in range(2)]
    # Exact on every machine: the products and sums of 1, 0.5, 2, 3, 4 are all exact in float32, in any order.
    assert not_symmetric.cpu().tolist() == v_transpose_w != w_v  # [2.5, 4] is not Wv = [2, 5]


def test_tanh_layer_analytic_jacobian_matches_finite_differences():
    _, _, analytic = lesson.tanh_layer(5)
    assert torch.allclose(analytic.double(), finite_difference_jacobian(5, "cpu"), atol=1e-3)


def test_three_ways_agree_with_finite_differences(lab):
    results = lab.run(lesson.jacobian_three_ways, size=4).names["results"]
    oracle = finite_difference_jacobian(4, lab.device).float()
    assert set(results) == {"grad loop", "is_grads_batched", "vmap(vjp)", "jacrev"}
    for name, jacobian in results.items():
        assert torch.allclose(jacobian, oracle, atol=1e-3), name


def test_loop_traps(lab):
    seen = lab.run(lesson.loop_traps, size=3)
    oracle = finite_difference_jacobian(3, lab.device).float()
    assert torch.allclose(seen["no_reset"], oracle.cumsum(0), atol=1e-3)  # J_0, J_0 + J_1, ...
    assert seen["one_object"] is True
    assert torch.allclose(seen["no_clone"], oracle[-1].expand(3, 3), atol=1e-3)
    assert torch.allclose(seen["fixed"], oracle, atol=1e-3)


def test_timed_jacobians_are_right_too(lab):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a setting other than the 1 the timing uses
    try:
        seen = lab.run(lesson.jacobian_timings, size=24, repeats=1).names
        assert torch.get_num_threads() == 2  # timed on one thread, then the setting is restored
    finally:
        torch.set_num_threads(threads)
    oracle = finite_difference_jacobian(24, lab.device).float()
    assert set(seen["jacobians"]) == set(seen["seconds"]) == {"grad loop", "is_grads_batched", "vmap(vjp)"}
    for name, jacobian in seen["jacobians"].items():
        assert torch.allclose(jacobian, oracle, atol=1e-3), name
    assert all(s > 0 for s in seen["seconds"].values())


def test_only_the_legacy_vmap_falls_back_for_tanh(lab):
    seen = lab.run(lesson.batched_grad_fallback)
    assert any("batching rule for aten::tanh_backward" in w for w in seen["warnings"])
    assert seen["func_messages"] == []
    # The switches are off again afterwards.
    assert not torch._C._debug_only_are_vmap_fallback_warnings_enabled()


@pytest.mark.parametrize("n", [5, 8])
def test_the_ops_each_way_runs_from_the_shapes(lab, n):
    """y = tanh(W x + b), W n×n: the forward is one mv; row i of J needs tanh' (a tanh_backward) and Wᵀ g_i."""
    seen = lab.run(lesson.batched_grad_fallback, size=n)
    forward = {f"mv({n}×{n}, {n})": 1}
    assert seen["loop_ops.counts"] == {f"mv({n}×{n}, {n})": 1 + n, f"tanh_backward({n}, {n})": n}
    assert seen["batched_ops.counts"] == {**forward, f"tanh_backward({n}, {n})": n,
                                          f"bmm({n}×{n}×{n}, {n}×{n}×1)": 1}
    assert seen["func_ops.counts"] == {**forward, f"tanh_backward({n}×{n}, {n})": 1,
                                       f"mm({n}×{n}, {n}×{n})": 1}


class RecordMatrixProducts(TorchDispatchMode):
    """The test's own recorder: every mv, mm, bmm and tanh_backward with its tensor arguments and output."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("mv", "mm", "bmm", "tanh_backward"):
            self.calls.append((func.overloadpacket.__name__, [a for a in args if isinstance(a, torch.Tensor)], out))
        return out


def test_is_grads_batched_bmm_runs_on_stride_0_views_of_w_transposed():
    """Backs [4]'s note and [5]'s why: the bmm's first operand is Wᵀ expanded N times, not a copy."""
    n = 6
    layer, x, _ = lesson.tanh_layer(n)
    with RecordMatrixProducts() as recorded:
        lesson.jacobian_by_batched_grad(layer, x)
    calls = [(name, args) for name, args, _ in recorded.calls if name != "tanh_backward"]
    (forward_name, (weight, _)), (bmm_name, (batch, _)) = calls
    assert (forward_name, bmm_name) == ("mv", "bmm")
    assert batch.shape == (n, n, n) and batch.stride() == (0, 1, n)  # Wᵀ's strides, batch stride 0
    assert batch.data_ptr() == weight.data_ptr()  # W's own memory: nothing copied
    assert all(torch.equal(batch[i], weight.T) for i in range(n))


def test_vmap_vjp_feeds_the_unit_vectors_to_tanh_backward_then_multiplies_by_w():
    """Backs [5]'s why: tanh_backward gets the n unit vectors (and y); the mm gets its output, diag(1 - y²), and W."""
    n = 6
    layer, x, _ = lesson.tanh_layer(n)
    with RecordMatrixProducts() as recorded:
        jacobian = lesson.jacobian_by_vmap_vjp(layer, x)
    (forward, (weight, _), _), (tanh_name, (grads, y), scaled), (mm_name, mm_args, product) = recorded.calls
    assert (forward, tanh_name, mm_name) == ("mv", "tanh_backward", "mm")
    assert torch.equal(grads, torch.eye(n))  # the unit vectors go into tanh_backward
    assert torch.allclose(y, layer(x))
    assert torch.allclose(scaled, torch.diag(1 - y**2))  # row i: e_i ⊙ (1 - y²)
    # The mm's two operands are those rows and W (views of them: W's own memory, no copy) ...
    assert {a.data_ptr() for a in mm_args} == {weight.data_ptr(), scaled.data_ptr()}
    assert product.shape == (n, n) and torch.allclose(jacobian, scaled @ weight)  # ... and J = rows times W


def test_batchnorm_train_mode_breaks_per_sample_gradients(lab):
    seen = lab.run(lesson.per_sample_trap, batch=4, features=3).names
    model, x = seen["model"], seen["x"]
    for mode in ("eval", "train"):  # eval first: a train-mode forward updates the running statistics
        model.train(mode == "train")
        # Full Jacobian d y_i / d x_j (y_i = Σ_k model(x)[i, k]), shape [batch, batch, features].
        full = torch.autograd.functional.jacobian(lambda inputs: model(inputs).sum(dim=1), x)
        summed = full.sum(dim=0)  # grad of Σ_i y_i
        diagonal = torch.stack([full[i, i] for i in range(x.shape[0])])  # d y_i / d x_i
        assert torch.allclose(seen["summed"][mode], summed, atol=1e-5), mode
        assert torch.allclose(seen["per_sample"][mode], diagonal, atol=1e-5), mode
        assert seen["gaps"][mode] == pytest.approx((summed - diagonal).abs().max().item(), abs=1e-5)
    assert seen["gaps"]["train"] > 1e-3
    # In eval mode row i of both gradients comes from the same ops on the same values (row i of the
    # incoming gradient is 1 in both, BatchNorm and tanh act elementwise, and Linear's backward is one
    # matmul of the same shapes, whose row i reads only row i, in an order fixed by the shapes): 0 on
    # every CPU, whatever its rounding; 1e-6 only allows for that.
    assert seen["gaps"]["eval"] == pytest.approx(0.0, abs=1e-6)


def test_size_flag_rejects_a_bad_size_in_one_line():
    for bad in ("1", "513", "x"):
        finished = run_in_process(lesson.__file__, ["--size", bad])
        assert finished.code == 2 and finished.stderr.count("\n") == 1 and "--size" in finished.stderr, bad
