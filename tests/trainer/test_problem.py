"""trainer/problem.py and the loss registry, against oracles written here: Φ's rank from numpy,
the derivative loss's Hessian from numpy, and each loss's symbol from the --help text of its
weight's flag (config.py)."""

import numpy as np
import pytest
import torch

from tensor_features.config import TrainConfig, build_parser
from tensor_features.trainer.losses import LOSSES, Loss
from tensor_features.trainer.problem import ProblemError, exact_problem, rank_shortfall


# Written by a tester who had not read these tests, from the trainer's code alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # problem.py: rank check off by one (needs one more nonzero x than the degree): `--n 4 --degree 4` (4 nonzero x, full rank) is refused with exit 2 "ΦᵀΦ is singular"
    ('tensor_features/trainer/problem.py', '    if nonzero >= degree:\n', '    if nonzero > degree:\n'),
    # problem.py: the rank shortfall raises even for a derivative loss (whose stacked rows [Φ; √β Φ′] are full rank): `--n 5 --loss sobolev --sweep` fails at degree 5 with exit 2 instead of completing the sweep
    ('tensor_features/trainer/problem.py', '    if shortfall and not loss.uses_derivative:\n', '    if shortfall:\n'),
    # losses.py: smooth's weight symbol copy-pasted from sobolev: the report says "β·mean(f′²), β = 0.1" and the plot label "smooth, β = 0.1" instead of λ
    ('tensor_features/trainer/losses.py', 'symbol="λ"', 'symbol="β"'),
    # problem.py: enough_points forgets that odd n puts a point at x = 0: `--n 3 --degree 3` advises "use --n 3 or more" (the very n that failed) instead of 4
    ('tensor_features/trainer/problem.py', '        return self.degree + self.degree % 2\n', '        return self.degree\n'),
    # problem.py: in_sweep drops the sweep's degrees: a sweep failure is worded as a plain run ("--degree 5 --basis monomial --n 5 ...") instead of "--sweep at degree 5 (... degrees 1..6)"
    ('tensor_features/trainer/problem.py', '        return ProblemError(self.reason, self.degree, self.basis, self.shortfall, self.too_alike,\n                            degrees)\n', '        return ProblemError(self.reason, self.degree, self.basis, self.shortfall, self.too_alike)\n'),
    # experiment.py: the sweep stops at degree 5: the sweep table has 5 rows (D = 1..5) and a failing sweep says "degrees 1..5"
    ('tensor_features/trainer/experiment.py', 'SWEEP_DEGREES = range(1, 7)', 'SWEEP_DEGREES = range(1, 6)'),
    # experiment.py: the sweep ignores --basis legendre and always fits monomials: `--basis legendre --sweep` shows the monomial κ and max |cos| columns
    ('tensor_features/trainer/experiment.py', '    basis = "legendre" if config.basis == "legendre" else "monomial"\n', '    basis = "monomial"\n'),
    # train.py: problem_text names the failing degree as the sweep's last: "the sweep fits degrees 1..5" when degree 5 fails, not 1..6
    ('tensor_features/train.py', '{err.sweep[0]}..{err.sweep[-1]}', '{err.sweep[0]}..{err.degree}'),
    # train.py: problem_text prints the weight without :g: a sobolev ProblemError reads "--beta 1.0" instead of "--beta 1" (smooth: "--penalty 0.1" unchanged, but 1e-05 style values differ)
    ('tensor_features/train.py', 'weight = f" --{flag} {getattr(config, flag):g}" if flag else ""', 'weight = f" --{flag} {getattr(config, flag)}" if flag else ""'),
]


def monomial_rank(x: np.ndarray, degree: int) -> int:
    """The rank of Φ = [x, x², ..., x^D], from numpy."""
    return int(np.linalg.matrix_rank(np.stack([x**k for k in range(1, degree + 1)], axis=1)))


@pytest.mark.parametrize("n, degree", [(4, 4), (5, 4), (5, 5), (3, 3), (3, 2), (6, 7)])
def test_a_shortfall_is_found_exactly_when_phi_has_rank_below_d(n, degree):
    x = torch.linspace(-1, 1, n, dtype=torch.float64)
    full_rank = monomial_rank(x.numpy(), degree) == degree
    assert (rank_shortfall(x.unsqueeze(1), degree) is None) == full_rank


def test_mse_on_a_rank_short_phi_is_a_problem_error():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).unsqueeze(1)  # 4 nonzero x
    with pytest.raises(ProblemError, match="ΦᵀΦ is singular"):
        exact_problem(x, x**2, 5, "monomial", Loss())


def test_a_derivative_loss_needs_no_full_rank_phi():
    # sobolev adds β·mean((f′ − 2x)²): the Hessian 2(ΦᵀΦ + β Φ′ᵀΦ′)/n is invertible although Φ
    # alone has rank 4 < 5 (x = 0 is one of the points). The optimum solves that system.
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).unsqueeze(1)
    y = x**2
    problem = exact_problem(x, y, 5, "monomial", Loss("sobolev", 1.0))
    xs = x.squeeze(1).numpy()
    phi = np.stack([xs**k for k in range(1, 6)], axis=1)
    dphi = np.stack([k * xs ** (k - 1) for k in range(1, 6)], axis=1)
    w = np.linalg.solve(phi.T @ phi + dphi.T @ dphi, phi.T @ y.numpy() + dphi.T @ (2 * xs[:, None]))
    assert np.allclose(problem.optimum.w.numpy(), w, rtol=1e-8, atol=1e-10)


def test_each_losss_symbol_is_the_one_its_flag_names():
    # config.py's help for each weight flag starts with its symbol ("λ > 0, the weight of ...").
    helps = {action.dest: action.help for action in build_parser()._actions}
    for kind in LOSSES.values():
        if kind.weight_flag is None:
            assert kind.symbol is None and not kind.uses_derivative
            continue
        assert kind.weight_flag in TrainConfig.__dataclass_fields__
        assert helps[kind.weight_flag].startswith(f"{kind.symbol} > 0"), kind.name
        assert f"{kind.symbol}·{kind.term}" in kind.summary, kind.name


# -- the degree sweep (trainer/experiment.py) -------------------------------------------------------

def legendre_phi(x: np.ndarray, degree: int) -> np.ndarray:
    """Φ_k = P_k(x) − P_k(0), k = 1..D, from numpy's Legendre polynomials."""
    from numpy.polynomial import legendre

    columns = []
    for k in range(1, degree + 1):
        coefficients = [0.0] * k + [1.0]
        columns.append(legendre.legval(x, coefficients) - legendre.legval(0.0, coefficients))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("basis", ["monomial", "legendre"])
def test_the_sweep_fits_degrees_1_to_6_in_the_basis_asked_for(basis):
    from tensor_features.load_data import load_data
    from tensor_features.trainer.experiment import degree_sweep

    config = TrainConfig(basis=basis, epochs=3)
    x, y = load_data(config.n, config.noise, config.seed)
    rows = degree_sweep(config, x, y, Loss())
    assert [row.degree for row in rows] == [1, 2, 3, 4, 5, 6]  # README: "for degrees 1..6"
    xs = x.squeeze(1).double().numpy()
    for row in rows:
        phi = (np.stack([xs**k for k in range(1, row.degree + 1)], axis=1) if basis == "monomial"
               else legendre_phi(xs, row.degree))
        eigenvalues = np.linalg.eigvalsh(phi.T @ phi)  # the mse Hessian 2ΦᵀΦ/n, up to its factor
        assert row.condition_number == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-6)


# -- the command line's words for a ProblemError (train.problem_text) -------------------------------

def test_a_problem_is_told_in_the_flags_that_set_it_up():
    from tensor_features.train import problem_text

    config = TrainConfig(loss="sobolev", beta=1.0, n=5, degree=5)
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).unsqueeze(1)
    with pytest.raises(ProblemError) as caught:
        exact_problem(x, x**2, 5, "monomial", Loss())
    text = problem_text(caught.value, config)
    # Flags as a learner types them: --beta 1, not --beta 1.0.
    assert text.startswith("--degree 5 --basis monomial --n 5 --noise 0.1 --beta 1: ΦᵀΦ is singular")
    assert "use --n 6 or more" in text  # degree 5 needs 5 nonzero x: 6 even-spaced points have no 0
    swept = problem_text(caught.value.in_sweep(range(1, 7)), config)
    assert swept.startswith("--sweep at degree 5 (--basis monomial; the sweep fits degrees 1..6)")
