"""make bench: what the lab's code costs, each figure beside a reference measured in the same run.

    python -m bench                      # every row; CUDA columns when a GPU is visible
    python -m bench --rows 2,3,4         # some rows only
    python -m bench --json bench.json    # the same figures as JSON
    python -m bench --markdown           # the table as Markdown (the README's copy)

Rows (a goal is a ratio, measured side by side, because this machine is shared and noisy):
  1  each lesson's whole-process start-up vs a bare `python -c "import torch"`, alternating runs
  2  the Jacobian of a 256×256 tanh layer three ways (lesson 05 vjp): times, and that they agree
  3  one training epoch at n = 2**22, degree 3, vs a memory-bandwidth floor: reading Φ twice and
     y once with plain sums, the least any epoch that reads its data forward and backward can cost
  4  epochs to within 1% of the least-squares optimum, lr = 0.1 and --lr auto, vs the textbook
     bound for gradient descent on a quadratic
  5  peak resident memory of a training run at n = 2**22 above an idle `import torch`, vs the
     bytes of x, y and Φ
  6  the test suite's wall time (pytest, what `make test` runs after the install)

Every time is a median. Nothing here is a test: tests check that the bench runs, never its times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from tensor_features import train
from tensor_features.config import TrainConfig
from tensor_features.load_data import load_data
from tensor_features.utils import (
    OneLineArgumentParser, add_device_argument, int_in_range, median_seconds, pick_device, synchronize)

ROOT = Path(__file__).resolve().parent.parent  # the lessons, and the cwd of every process we time
LESSONS = sorted(ROOT.glob("[0-9][0-9]_*.py"))
ROWS = (1, 2, 3, 4, 5, 6)
MB = 2**20


@dataclass
class Figure:
    """One device's measurement for a row, and the reference measured beside it."""
    value: float | None
    reference: float | None
    unit: str  # "s", "ms", "epochs", "MB"
    met: bool | None = None  # None: this row has no goal of its own
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


@dataclass
class Row:
    key: str
    what: str
    goal: str
    cpu: Figure | None = None
    cuda: Figure | None = None


# -- how things are measured -----------------------------------------------------------------

def process_run(args: list[str]) -> tuple[float, int]:
    """Run `python ARGS` with its output discarded: (wall seconds, exit code)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = child.wait()
    return time.perf_counter() - start, code


# Run in the child: the program, then its own peak resident set (VmHWM) written to a pipe. The
# child must read it itself: ru_maxrss from wait4 also counts the parent's memory, which the child
# shared between fork and exec.
PEAK_RSS_WRAPPER = """
import atexit, os, runpy, sys
fd = int(sys.argv.pop(1))
def report():
    status = open('/proc/self/status').read()
    peak_kb = next(line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:'))
    os.write(fd, peak_kb.encode())
atexit.register(report)
if sys.argv[1] == '-c':
    exec(sys.argv[2], {'__name__': '__main__'})
else:
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def peak_rss_mb(args: list[str]) -> tuple[float, int]:
    """(peak resident memory in MB, exit code) of `python -c CODE` or `python -m MODULE ARGS`."""
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", PEAK_RSS_WRAPPER, str(write_end), *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_end,))
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reported = pipe.read()
    code = child.wait()
    return (int(reported) / 1024 if reported else math.nan), code


def load_lesson(filename: str):
    """Import a top-level lesson file as a module (its name starts with a digit); the tests use it too."""
    import importlib.util

    name = "lesson_" + Path(filename).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def feature_bytes(n: int, degree: int) -> int:
    """Bytes of x (n), y (n) and Φ (n × degree), all float32."""
    return n * (2 + degree) * 4


# -- row 1: start-up -----------------------------------------------------------------------------

def startup(device: torch.device, lessons: list[Path], rounds: int) -> list[Row]:
    if device.type == "cuda":  # any CUDA program pays for the context: put it in the reference too
        bare = ["-c", "import torch; torch.zeros(1, device='cuda')"]
    else:
        bare = ["-c", "import torch"]
    bare_times, lesson_times, failures = [], {p.name: [] for p in lessons}, {}
    for _ in range(rounds):
        for lesson in lessons:  # alternate, so that a slow spell of the machine hits both
            bare_times.append(process_run(bare)[0])
            seconds, code = process_run([lesson.name, "--device", device.type])
            lesson_times[lesson.name].append(seconds)
            if code != 0:
                failures[lesson.name] = code
    reference = statistics.median(bare_times)
    rows = []
    for lesson in lessons:
        figure = Figure(statistics.median(lesson_times[lesson.name]), reference, "s")
        figure.met = figure.ratio <= 1.3 and lesson.name not in failures
        if lesson.name in failures:
            figure.note = f"exit code {failures[lesson.name]}"
        short = re.sub(r"^(\d\d)_(?:tensor_attributes_and_methods|gradient_computation)_", r"\1 ", lesson.stem)
        rows.append(Row(f"1{chr(ord('a') + len(rows))}", f"start-up: lesson {short}", "≤ 1.3", figure))
    return rows


# -- row 2: the Jacobian three ways --------------------------------------------------------------

def jacobian(device: torch.device, size: int, repeats: int) -> list[Row]:
    vjp = load_lesson("05_gradient_computation_vjp.py")
    layer, x, analytic = vjp.tanh_layer(size, device)
    methods = {
        "autograd.grad loop": vjp.jacobian_by_loop,
        "is_grads_batched=True": vjp.jacobian_by_batched_grad,
        "vmap(vjp)": vjp.jacobian_by_vmap_vjp,
    }
    rows, loop_seconds = [], None
    for name, method in methods.items():
        agrees = torch.allclose(method(layer, x), analytic, rtol=1e-4, atol=1e-5)  # diag(1 - y²) W
        seconds = median_seconds(lambda method=method: method(layer, x), repeats=repeats, device=device)
        loop_seconds = loop_seconds or seconds
        figure = Figure(seconds * 1e3, None if name.endswith("loop") else loop_seconds * 1e3, "ms", met=agrees)
        if figure.ratio is not None:
            figure.note = f"{1 / figure.ratio:.1f}× faster" if figure.ratio < 1 else f"{figure.ratio:.1f}× slower"
        rows.append(Row(f"2{chr(ord('a') + len(rows))}", f"Jacobian {size}×{size}: {name}",
                        "agree" if name.endswith("loop") else "agree; vs loop", figure))
    return rows


# -- row 3: one epoch against the memory floor ---------------------------------------------------

def epoch(device: torch.device, n: int, repeats: int, degree: int = 3) -> list[Row]:
    x, y = load_data(n, device=device)
    phi = train.make_features(x, degree)

    def read_floor():
        # Φ read twice (forward and backward each need it) and y once, by the plainest kernel there is.
        return phi.sum(), phi.sum(), y.sum()

    floor = median_seconds(read_floor, repeats=repeats, device=device) * 1e3
    w0 = train.initial_weights(degree, 0, device)

    def epoch_ms(step) -> float:
        w = w0.clone().requires_grad_()
        return median_seconds(lambda: step(w), repeats=repeats, device=device) * 1e3

    seed_loop = epoch_ms(lambda w: train.manual_step(phi, y, w, 0.1))
    rows_phi = train.rows_layout(phi)
    eager = train.FastLoss(rows_phi, y, compile=False)
    eager_rows = epoch_ms(lambda w: eager.manual_step(w, 0.1))
    fast = train.FastLoss(rows_phi, y)
    w = w0.clone().requires_grad_()
    start = time.perf_counter()
    fast.manual_step(w, 0.1)  # compiles forward and backward
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    compiled = epoch_ms(lambda w: fast.manual_step(w, 0.1))

    what = f"epoch n=2^{int(math.log2(n))}" if n & (n - 1) == 0 else f"epoch n={n}"
    return [
        Row("3a", f"{what}, default (the seed's loop)", "report", Figure(seed_loop, floor, "ms")),
        Row("3b", f"{what}, Φ as d×n rows, eager", "report", Figure(eager_rows, floor, "ms")),
        Row("3c", f"{what}, --fast (d×n + torch.compile)", "≤ 3",
            Figure(compiled, floor, "ms", met=compiled <= 3 * floor)),
        Row("3d", "--fast: first epoch, compiling included", "report",
            Figure(compile_seconds, None, "s", note="once per process; inductor caches on disk")),
    ]


# -- row 4: time to solution ---------------------------------------------------------------------

def gd_epoch_bound(optimum: train.Optimum, lr: float, initial_loss: float, tolerance: float = 0.01) -> int:
    """Epochs after which gradient descent on a quadratic is surely within `tolerance` of f*.

    With Hessian H and e = w - w*, each step maps e to (I - lr H) e, and the excess loss
    f(w) - f* = ½ eᵀHe shrinks at least by ρ² per step, ρ = max|1 - lr λ| over H's eigenvalues:
    f(w_k) - f* ≤ ρ^(2k) (f(w_0) - f*). Solve ρ^(2k) (f(w_0) - f*) ≤ tolerance · f* for k.
    """
    rho = optimum.contraction(lr)
    excess, target = initial_loss - optimum.loss, tolerance * optimum.loss
    if excess <= target:
        return 0
    if rho >= 1:
        return math.inf
    return math.ceil(math.log(target / excess) / (2 * math.log(rho)))


def time_to_solution(device: torch.device, max_epochs: int = 20000, starts: int = 20) -> list[Row]:
    seed = TrainConfig()  # the seed's data: n = 100, noise 0.1, degree 3
    x, y = load_data(seed.n, seed.noise, seed.seed, device)
    phi = train.make_features(x, seed.degree)
    optimum = train.least_squares_optimum(phi, y)
    w0 = train.initial_weights(seed.degree, seed.seed, device)
    found = {}
    for label, lr in (("0.1", 0.1), ("auto", optimum.best_lr)):
        losses = train.fit(phi, y, w0, lr, max_epochs).losses
        epochs = train.epochs_to_within(losses, optimum.loss)
        found[label] = Figure(epochs, gd_epoch_bound(optimum, lr, losses[0]), "epochs",
                              note=f"lr {lr:.4g}, ρ = {optimum.contraction(lr):.4f}")
        if epochs is None:
            found[label].note += f"; not within 1% in {max_epochs}"
    found["auto"].met = found["auto"].value is not None and found["auto"].value <= found["auto"].reference
    speedup = Figure(found["0.1"].value, found["auto"].value, "epochs")
    speedup.met = speedup.ratio is not None and speedup.ratio >= 10
    speedup.note = "epochs at lr 0.1 over epochs at --lr auto"
    # The ratio depends on where w starts: how much of w0 - w* lies along the flat direction.
    ratios = []
    for start in range(1, starts + 1):
        w_start = train.initial_weights(seed.degree, seed.seed + start, device)
        epochs = [train.epochs_to_within(train.fit(phi, y, w_start, lr, 2000).losses, optimum.loss)
                  for lr in (0.1, optimum.best_lr)]
        if None not in epochs:
            ratios.append(epochs[0] / epochs[1])
    spread = Figure(statistics.median(ratios) if ratios else None, None, "×",
                    note=f"median over {len(ratios)} other initial w, range {min(ratios, default=0):.1f}"
                         f"–{max(ratios, default=0):.1f}")
    return [
        Row("4a", "epochs to 1% of optimum, lr 0.1, vs bound", "report", found["0.1"]),
        Row("4b", "epochs to 1% of optimum, --lr auto, vs bound", "≤ 1", found["auto"]),
        Row("4c", "epochs lr 0.1 / epochs --lr auto", "≥ 10", speedup),
        Row("4d", "the same ratio from other initial w", "report", spread),
    ]


# -- row 5: memory ---------------------------------------------------------------------------------

def memory(device: torch.device, n: int, epochs: int = 20, rounds: int = 3) -> list[Row]:
    budget = feature_bytes(n, 3) / MB
    variants = {"default": [], "--fast": ["--fast"]}
    if device.type == "cuda":  # the data live on the GPU: count what the caching allocator handed out
        rows = []
        for name, extra in variants.items():
            config = replace(TrainConfig(), n=n, epochs=epochs, update="manual", device="cuda", fast=bool(extra))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with contextlib.redirect_stdout(io.StringIO()):
                train.run(config, device)
            peak = torch.cuda.max_memory_allocated() / MB
            rows.append(Figure(peak, budget, "MB", met=peak <= 4 * budget, note="peak CUDA memory allocated"))
        return [Row("5a", "", "≤ 4", rows[0]), Row("5b", "", "≤ 4", rows[1])]

    idle = statistics.median(peak_rss_mb(["-c", "import torch"])[0] for _ in range(rounds))
    rows = []
    for key, (name, extra) in zip("ab", variants.items()):
        def command(size: int) -> list[str]:
            return ["-m", "tensor_features.train", "--n", str(size), "--epochs", str(epochs),
                    "--update", "manual", "--device", "cpu", *extra]

        runs = [peak_rss_mb(command(n)) for _ in range(rounds)]
        fixed = peak_rss_mb(command(16))[0] - idle  # what the run costs with (almost) no data
        figure = Figure(statistics.median(peak for peak, _ in runs) - idle, budget, "MB",
                        note=f"idle import torch {idle:.0f} MB; the same run at n=16 {fixed:+.0f} MB")
        codes = [code for _, code in runs if code != 0]
        figure.met = not codes and figure.ratio <= 4
        if codes:
            figure.note = f"exit code {codes[0]}"
        size = f"2^{int(math.log2(n))}" if n & (n - 1) == 0 else str(n)
        rows.append(Row(f"5{key}", f"peak memory, n={size}, {name} path", "≤ 4", figure))
    return rows


# -- row 6: the test suite -------------------------------------------------------------------------

def test_suite() -> list[Row]:
    seconds, code = process_run(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
    figure = Figure(seconds, 120.0, "s", met=code == 0 and seconds < 120, note="reference: the 2-minute goal")
    if code != 0:
        figure.note = f"pytest exit code {code}"
    return [Row("6", "test suite (pytest, as make test runs it)", "< 1", figure)]


# -- the table ---------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "gpu": gpu}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if value == math.inf:
        return "∞"
    if unit == "epochs":
        return f"{value:.0f}"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "×":
        return f"{value:.1f}×"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def cells(figure: Figure | None, no_figure: str) -> list[str]:
    if figure is None:
        return [no_figure, "", "", ""]
    ratio = "—" if figure.ratio is None else f"{figure.ratio:.3g}"
    met = {True: "ok", False: "MISS", None: ""}[figure.met]
    return [fmt(figure.value, figure.unit), fmt(figure.reference, figure.unit), ratio, met]


HEADER = ["#", "what", "goal", "CPU", "reference", "ratio", "met", "CUDA", "reference", "ratio", "met", "note"]


def table_rows(rows: list[Row], gpu: str) -> list[list[str]]:
    lines = []
    for row in rows:
        note = "; ".join(f.note for f in (row.cpu, row.cuda) if f is not None and f.note)
        lines.append([row.key, row.what, row.goal, *cells(row.cpu, "—"), *cells(row.cuda, gpu), note])
    return lines


def render_text(rows: list[Row], info: dict) -> str:
    gpu = "no GPU" if info["gpu"] == "no GPU" else "—"
    body = [HEADER, *table_rows(rows, gpu)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]
    out = [f"machine: {info['cpu']} · {info['cores']} cores, torch threads {info['torch_threads']} · "
           f"Python {info['python']} · torch {info['torch']} · GPU: {info['gpu']}",
           "ratio = measured / reference, both medians from this run; goal applies to the ratio"]
    for line in body:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return "\n".join(out)


def render_markdown(rows: list[Row], info: dict) -> str:
    gpu = "no GPU" if info["gpu"] == "no GPU" else "—"
    out = [f"machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), "
           f"Python {info['python']}, torch {info['torch']}, GPU: {info['gpu']}", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for line in table_rows(rows, gpu):
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    return "\n".join(out)


def as_json(rows: list[Row], info: dict) -> dict:
    def figure(f: Figure | None):
        return None if f is None else {**asdict(f), "ratio": f.ratio}

    return {"machine": info, "rows": [{"key": r.key, "what": r.what, "goal": r.goal,
                                       "cpu": figure(r.cpu), "cuda": figure(r.cuda)} for r in rows]}


# -- the command line ---------------------------------------------------------------------------------

def row_list(text: str) -> list[int]:
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of row numbers") from None
    if not chosen or not set(chosen) <= set(ROWS):
        raise argparse.ArgumentTypeError(f"{text!r}: rows are {', '.join(map(str, ROWS))}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=row_list, default=list(ROWS), help="which rows, e.g. 2,3,4 (default: all)")
    add_device_argument(parser)
    parser.add_argument("--n", type=int_in_range(16, 2**26), default=2**22,
                        help="data points for rows 3 and 5 (default: %(default)s = 2**22)")
    parser.add_argument("--size", type=int_in_range(2, 4096), default=256, help="layer size for row 2 (default: %(default)s)")
    parser.add_argument("--rounds", type=int_in_range(1, 50), default=3,
                        help="alternating process launches per lesson in row 1 (default: %(default)s)")
    parser.add_argument("--repeats", type=int_in_range(1, 1000), default=11,
                        help="timed repeats behind each in-process median (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser


def measure(rows: list[int], device: torch.device, args) -> list[Row]:
    """All chosen rows on one device, in order."""
    out = []
    for number in rows:
        print(f"  row {number} on {device.type} ...", file=sys.stderr, flush=True)
        if number == 1:
            out += startup(device, LESSONS, args.rounds)
        elif number == 2:
            out += jacobian(device, args.size, args.repeats)
        elif number == 3:
            out += epoch(device, args.n, args.repeats)
        elif number == 4:
            out += time_to_solution(device)
        elif number == 5:
            out += memory(device, args.n)
        elif number == 6 and device.type == "cpu":
            out += test_suite()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    json_path = Path(args.json) if args.json else None
    if json_path is not None:  # fail now, not after minutes of measuring
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--json {args.json}: cannot create its folder ({err.strerror})")
        if json_path.is_dir() or not os.access(json_path.parent, os.W_OK):
            parser.error(f"--json {args.json}: not a writable file path")

    info = machine()
    rows = measure(args.rows, torch.device("cpu"), args)
    if device.type == "cuda":
        by_key = {row.key: row for row in measure(args.rows, device, args)}
        for row in rows:
            if row.key in by_key:
                row.cuda = by_key[row.key].cpu
    print(render_markdown(rows, info) if args.markdown else render_text(rows, info))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(rows, info), indent=2, default=str) + "\n")
        print(f"wrote {json_path}")
    missed = [row.key for row in rows if row.cpu is not None and row.cpu.met is False]
    if missed:
        print(f"goals missed on the CPU: {', '.join(missed)} (the README's 성능 section says why)")
    # A slow row is a finding; a wrong one (Jacobians that disagree, a process that failed) is an error.
    broken = [row.key for row in rows for f in (row.cpu, row.cuda)
              if f is not None and (f.met is False and row.goal.startswith("agree") or "exit code" in f.note)]
    if broken:
        print(f"broken: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0
