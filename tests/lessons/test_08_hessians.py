"""08 Hessians: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: the derivatives of sin (cos, −sin) and gradgradcheck;
H = Wᵀ diag(tanh″(W x + b)) W in float64 for the larger function; for the trainer's loss, the
closed form 2ΦᵀΦ/n with Φ = [x, x², x³] built here in float64, its eigenvalues, and the trainer's
own printout (its first loss and the figures it derives from the eigenvalues). TRY_PROMISES: what
each of the lesson's Try lines does (tests/lab/test_tries.py).

This file asserts no timing: that observation is run with a lab of the test's own, and only its
agreement checks must hold. (The lesson prints its timings as notes;
none is a check, so no timing can fail its terminal run either.)
"""

import inspect
import math
import re

import pytest
import torch
from torch.func import hessian

from tests.support import DEVICES, Promise, assert_caught, load_lesson, quiet_lab
from tensor_features import train
from tensor_features.load_data import load_data

lesson = load_lesson("08_higher_order_hessians.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  no error",)),
    Promise(exit=1, shows=("FAIL  by_autograd = ", "FAIL  hvp = ", "FAIL  eigenvalues = ", "FAIL  stability_limit = ",
                       "ok  condition_number = ")),
]
# pytest resets warning filters per test; the lesson's filter for torch's own jit.script deprecation goes with it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

MUTANTS = [
    ("08_higher_order_hessians.py", "return torch.sin(x).sum()", "return torch.cos(x).sum()"),
    ("08_higher_order_hessians.py", "(gradient,) = torch.autograd.grad(sine_sum(leaf), leaf, create_graph=True)",
     "(gradient,) = torch.autograd.grad(sine_sum(leaf), leaf)"),
    ("08_higher_order_hessians.py", "torch.autograd.grad(gradient[i], leaf, retain_graph=True)[0]",
     "torch.autograd.grad(gradient[i], leaf)[0]"),
    ("08_higher_order_hessians.py", "jvp(grad(sine_sum), (x,), (v,))", "jvp(grad(sine_sum), (x,), (x,))"),
    ("08_higher_order_hessians.py", "return torch.tanh((x @ c) * x).sum()", "return torch.tanh(x * x).sum()"),
    ("08_higher_order_hessians.py", '"jacfwd(jacrev)": jacfwd(jacrev(coupled))(x)', '"jacfwd(jacrev)": jacrev(jacrev(coupled))(x)'),
    ("08_higher_order_hessians.py", "(reverse_over_reverse,) = vjp(grad(f), x)[1](v)",
     "(reverse_over_reverse,) = vjp(grad(f), v)[1](x)"),
    ("08_higher_order_hessians.py", "torch.tanh(weight @ inputs + bias).sum()", "torch.tanh(weight @ inputs).sum()"),
    ("08_higher_order_hessians.py", "lambda w: ((phi @ w - y) ** 2).mean()", "lambda w: ((phi @ w - y) ** 2).sum()"),
    ("08_higher_order_hessians.py", "phi = feature_map(x, config.degree)", "phi = feature_map(x, 2)"),
    ("08_higher_order_hessians.py", "initial_weights(config.degree, config.seed, lab.device)",
     "initial_weights(config.degree, config.seed + 1, lab.device)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 08 Hessians
    # which_composition(): hessian computed as jacrev(jacrev): not bit-equal to jacfwd(jacrev)
    ('08_higher_order_hessians.py', '    by_hessian = hessian(coupled)(x)\n', '    by_hessian = jacrev(jacrev(coupled))(x)\n'),
    # which_composition(): the route labelled jacfwd(jacrev) is jacrev(jacfwd)
    ('08_higher_order_hessians.py', '"jacfwd(jacrev)": jacfwd(jacrev(coupled))(x),', '"jacfwd(jacrev)": jacrev(jacfwd(coupled))(x),'),
    # hvp_two_ways(): the "HVP" is a JVP of f itself, not of grad(f): a scalar cos(x)·v
    ('08_higher_order_hessians.py', '_, forward_over_reverse = jvp(grad(sine_sum), (x,), (v,))', '_, forward_over_reverse = jvp(sine_sum, (x,), (v,))'),
    # trainer_hessian(): stability limit from λmin instead of λmax
    ('08_higher_order_hessians.py', 'stability_limit = 2 / eigenvalues[-1].item()', 'stability_limit = 2 / eigenvalues[0].item()'),
    # hvp_against_forming_h(): sign of tanh″ lost in the by-hand HVP
    ('08_higher_order_hessians.py', 'hvp_by_hand = weight.T @ (-2 * t * (1 - t**2) * (weight @ v))', 'hvp_by_hand = weight.T @ (2 * t * (1 - t**2) * (weight @ v))'),
]

X = [0.0, 1.0, 2.0]


def diag_minus_sin() -> torch.Tensor:
    """d²/dx² sin = −sin, and Σ sin(xᵢ) has no mixed terms."""
    return torch.diag(torch.tensor([-math.sin(t) for t in X], dtype=torch.float64))


def test_sine_sum_passes_gradgradcheck():
    x = torch.tensor([0.3, 1.1, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lesson.sine_sum, (x,))
    assert torch.autograd.gradgradcheck(lesson.sine_sum, (x,))
    assert lesson.sine_sum(x).item() == pytest.approx(sum(math.sin(t) for t in (0.3, 1.1, 2.5)))


def test_hessian_three_ways_is_diag_minus_sin(lab):
    seen = lab.run(lesson.hessian_three_ways)
    for name in ("by_functional", "by_func", "by_double_backward"):
        assert seen[name].shape == (3, 3), name
        assert torch.allclose(seen[name].cpu().double(), diag_minus_sin(), atol=1e-6), name


def coupled_hessian(x: torch.Tensor) -> torch.Tensor:
    """H of g(x) = Σ tanh(uᵢ), uᵢ = (c·x) xᵢ, c = (1, 2, 3), by hand in float64:
    ∂uᵢ/∂xⱼ = cⱼ xᵢ + (c·x) δᵢⱼ and ∂²uᵢ/∂xⱼ∂xₖ = cⱼ δᵢₖ + cₖ δᵢⱼ, so
    H = Aᵀ diag(tanh″(u)) A + c tanh′(u)ᵀ + tanh′(u) cᵀ with Aᵢⱼ = ∂uᵢ/∂xⱼ."""
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    s = (c @ x).item()
    t = torch.tanh(s * x)
    first, second = 1 - t**2, -2 * t * (1 - t**2)
    a = x[:, None] * c[None, :] + s * torch.eye(3, dtype=torch.float64)
    return a.T @ (second[:, None] * a) + c[:, None] * first[None, :] + first[:, None] * c[None, :]


def test_torch_func_hessian_is_jacfwd_of_jacrev_bit_for_bit(lab):
    seen = lab.run(lesson.which_composition)
    out = seen.names
    x = out["x"].cpu().double()
    oracle = coupled_hessian(x)
    off_diagonal = oracle[~torch.eye(3, dtype=torch.bool)]
    assert off_diagonal.abs().min() > 0.1  # cross terms everywhere
    for name, h in {"hessian": out["by_hessian"], **out["routes"]}.items():
        assert torch.allclose(h.cpu().double(), oracle, atol=1e-5), name
    # Exact equality only here: torch.func.hessian(g) is literally jacfwd(jacrev(g, 0), 0) (the source
    # line below), so both run the same ops in the same order on the same x in this process, and no CPU
    # can round one differently from the other. The other routes run other ops: checked within atol.
    assert torch.equal(out["by_hessian"], out["routes"]["jacfwd(jacrev)"])
    # The cited line of torch/_functorch/eager_transforms.py, in the installed torch.
    assert "return jacfwd(jacrev(func, argnums), argnums)" in inspect.getsource(hessian)


def test_without_create_graph_the_gradient_is_plain_cos(lab):
    seen = lab.run(lesson.without_create_graph)
    gradient = seen.names["gradient"]
    assert torch.allclose(gradient.cpu().double(), torch.tensor([math.cos(t) for t in X], dtype=torch.float64))
    assert gradient.requires_grad is False
    requires_grad, grad_fn = seen["(gradient.requires_grad, gradient.grad_fn)"]
    assert requires_grad is False and grad_fn is None
    assert_caught(seen["error"], RuntimeError, "element 0 of tensors does not require grad")


def test_hvp_two_ways_is_minus_sin_times_v(lab):
    seen = lab.run(lesson.hvp_two_ways)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for name in ("forward_over_reverse", "reverse_over_reverse"):
        assert torch.allclose(seen[name].cpu().double(), diag_minus_sin() @ v, atol=1e-6), name


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_on_the_larger_function_matches_w_t_diag_w(device):
    lab = quiet_lab(device)
    threads = torch.get_num_threads()
    seen = lab.run(lesson.hvp_against_forming_h)
    assert torch.get_num_threads() == threads  # fastest_seconds times on one thread, then restores the setting
    assert [line for line in lab.failed if "max |" in line or "bytes" in line] == [], lab.stream.getvalue()
    out = seen.names
    n = out["n"]
    f, x, v, weight, bias = lesson.summed_layer(n, 64)  # outside an observation: on the CPU
    x, v, weight, bias = x.double(), v.double(), weight.double(), bias.double()
    assert f(x.float()).item() == pytest.approx(torch.tanh(weight @ x + bias).sum().item(), rel=1e-5)
    t = torch.tanh(weight @ x + bias)
    # d²/du² tanh(u) = −2 tanh(u) (1 − tanh²(u)); the chain rule through u = W x + b twice.
    oracle_h = weight.T @ torch.diag(-2 * t * (1 - t**2)) @ weight
    for name in ("hvp_by_hand", "from_h", "forward_over_reverse", "reverse_over_reverse"):
        assert out[name].shape == (n,), name
        assert torch.allclose(out[name].cpu().double(), oracle_h @ v, atol=1e-5), name
    assert seen["(h_bytes, hvp_bytes)"] == (n * n * 4, n * 4)  # float32: 4 bytes a number
    assert set(out["seconds"]) == {"forming H, then H @ v", "jvp of grad", "vjp of grad"}


def trainer_problem():
    """The trainer's default data, with Φ = [x, x², x³] built here, in float64."""
    x, y = load_data(100, 0.1, 0)  # python -m tensor_features.train: --n 100 --noise 0.1 --seed 0
    x64 = x.double()
    phi = torch.cat([x64, x64**2, x64**3], dim=1)
    return phi, y.double()


def test_trainer_hessian_is_two_phi_t_phi_over_n(lab):
    seen = lab.run(lesson.trainer_hessian)
    phi, y = trainer_problem()
    n = phi.shape[0]
    closed_form = 2 * phi.T @ phi / n  # ∇²_w mean((Φw − y)²)
    assert torch.allclose(seen.names["phi"].cpu().double(), phi, atol=1e-6)
    assert torch.allclose(seen["by_autograd"].cpu().double(), closed_form, rtol=1e-5, atol=1e-6)
    v = torch.tensor([[1.0], [-1.0], [0.5]], dtype=torch.float64)
    assert torch.allclose(seen["hvp"].cpu().double(), closed_form @ v, rtol=1e-5, atol=1e-6)
    eigenvalues = torch.linalg.eigvalsh(closed_form)
    assert torch.allclose(seen["eigenvalues"].cpu().double(), eigenvalues, rtol=1e-4)
    assert seen["stability_limit"] == pytest.approx(2 / eigenvalues[-1].item(), rel=1e-4)
    assert seen["condition_number"] == pytest.approx((eigenvalues[-1] / eigenvalues[0]).item(), rel=1e-4)


def test_the_hessian_of_the_loss_is_the_same_at_every_w_and_y():
    """The lesson's comment: ∇²L = 2ΦᵀΦ/n whatever w and y are."""
    phi, _ = trainer_problem()
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(3, 1, generator=generator, dtype=torch.float64)
        y = torch.randn(phi.shape[0], 1, generator=generator, dtype=torch.float64)
        h = hessian(lambda w: ((phi @ w - y) ** 2).mean())(w).reshape(3, 3)
        assert torch.allclose(h, 2 * phi.T @ phi / phi.shape[0])


def test_the_trainer_prints_what_the_lesson_derives(capsys):
    """The trainer's own run: its first loss is the lesson's loss at w0, and the step-size limit and
    condition number it prints are those of 2ΦᵀΦ/n built here."""
    lesson_out = quiet_lab().run(lesson.trainer_hessian).names
    train.main(["--device", "cpu", "--epochs", "1", "--update", "manual"])
    printed = capsys.readouterr().out
    phi, y = trainer_problem()
    eigenvalues = torch.linalg.eigvalsh(2 * phi.T @ phi / phi.shape[0])
    assert f"2/λmax = {2 / eigenvalues[-1].item():.4g}" in printed, printed
    assert f"condition number {(eigenvalues[-1] / eigenvalues[0]).item():.4g}" in printed, printed
    first_loss = float(re.search(r"Epoch 0, Loss ([0-9.]+)", printed)[1])
    w0 = lesson_out["w0"].double()
    assert first_loss == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), abs=1e-4)  # printed to 4 decimals


def test_each_named_route_is_the_composition_that_ran(monkeypatch):
    # The routes are told apart by the transforms that ran, not by rounding, which two routes
    # may share on some CPU: each of the lesson's hessian/jacfwd/jacrev is wrapped to record
    # what it composed.
    made = []

    def spy(name, transform):
        def wrapped(f, *args, **kwargs):
            inner, result = getattr(f, "route", "g"), transform(f, *args, **kwargs)

            def call(*a, **k):
                return result(*a, **k)

            call.route = f"{name}({inner})"
            made.append(call.route)
            return call
        return wrapped

    for name in ("hessian", "jacfwd", "jacrev"):
        monkeypatch.setattr(lesson, name, spy(name, getattr(torch.func, name)))
    lab = quiet_lab()
    lab.run(lesson.which_composition)
    assert made == ["hessian(g)", "jacrev(g)", "jacfwd(jacrev(g))", "jacrev(g)", "jacrev(jacrev(g))",
                    "jacfwd(g)", "jacfwd(jacfwd(g))"]
    assert lab.failed == []
