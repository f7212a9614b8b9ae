"""make mutate: small wrong edits of the lessons and the trainer, each of which a test must catch.

    python -m tests.mutate [--only TEXT] [--blind] [--jobs N] [--list]

Every test file may define a module-level list of mutants, literal tuples

    MUTANTS = [
        ("05_gradient_computation_backward.py", "y = x**2 + 2 * x", "y = x**2 + 3 * x"),
        ...
    ]

(file relative to the repository, old text that occurs there exactly once, new text). A list named
BLIND_MUTANTS has the same form: mutants written by a tester who had not read the tests, from the
lessons and the package alone (their kill rate is reported on its own line). For each
mutant this tool copies the repository, makes the edit, and runs that test file with
LAB_FORCE_AGREE=1, which makes every lesson check agree: a lesson whose code and expectation are
both wrong then passes its own checks, so only the test's own oracle can catch it. A mutant is
killed when the test file fails, or when it runs past --timeout-factor times its unchanged run
(a mutant that loops forever). Unchanged, each test file must pass in the same setting.

Prints one line per mutant and the kill rate; exits 1 if any mutant survives.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "data", "plots", "out")


@dataclass(frozen=True)
class Mutant:
    test_file: str  # tests/lessons/test_x.py, where it was declared
    target: str
    old: str
    new: str
    blind: bool = False  # from a BLIND_MUTANTS list

    def label(self) -> str:
        """The file and the changed part of the text, with a little context on each side."""
        old, new = (" ".join(part.split()) for part in (self.old, self.new))
        prefix = len(os.path.commonprefix([old, new]))
        suffix = len(os.path.commonprefix([old[prefix:][::-1], new[prefix:][::-1]]))
        start = max(0, prefix - 12)

        def middle(text: str) -> str:
            cut = text[start: len(text) - suffix + min(suffix, 12)]
            return ("…" if start else "") + cut + ("…" if suffix > 12 else "")

        return f"{self.target}: `{middle(old)}` -> `{middle(new)}`"


def collect(only: str | None = None, blind_only: bool = False) -> list[Mutant]:
    """Every MUTANTS and BLIND_MUTANTS list in tests/**/test_*.py, read without importing the test files."""
    mutants = []
    for test_file in sorted((ROOT / "tests").rglob("test_*.py")):
        if only is not None and not _may_hold(test_file, only):
            continue
        tree = ast.parse(test_file.read_text())
        for node in tree.body:
            names = {getattr(t, "id", None) for t in node.targets} if isinstance(node, ast.Assign) else set()
            if names & {"MUTANTS", "BLIND_MUTANTS"}:
                blind = "BLIND_MUTANTS" in names
                if blind_only and not blind:
                    continue
                try:
                    entries = ast.literal_eval(node.value)
                except ValueError:
                    raise SystemExit(f"{test_file.name}: MUTANTS must be a literal list of (file, old, new) tuples")
                for target, old, new in entries:
                    mutant = Mutant(test_file.relative_to(ROOT).as_posix(), target, old, new, blind)
                    if only is None or only in mutant.label() or only in mutant.test_file:
                        mutants.append(mutant)
    return mutants


def _may_hold(test_file: Path, only: str) -> bool:
    """Whether a test file can hold a mutant matching --only (by its name, or by text it contains)."""
    return only in test_file.relative_to(ROOT).as_posix() or only in test_file.read_text()


def problems(mutants: list[Mutant]) -> list[str]:
    """Mutants that cannot be applied: a missing file, or old text that is not there exactly once."""
    found = []
    for mutant in mutants:
        path = ROOT / mutant.target
        if not path.exists():
            found.append(f"{mutant.test_file}: no file {mutant.target}")
        elif (count := path.read_text().count(mutant.old)) != 1:
            found.append(f"{mutant.test_file}: `{mutant.old}` occurs {count} times in {mutant.target}")
        elif mutant.old == mutant.new:
            found.append(f"{mutant.test_file}: a mutant that changes nothing in {mutant.target}")
    return found


def run_tests(copy: Path, test_file: str, timeout: float | None = None) -> tuple[bool | None, float]:
    """(passed, seconds) of one test file in a copy of the repository, checks forced to agree.

    passed is None when the run outlived `timeout` seconds: a mutant that loops forever is
    stopped (with every process it started) and counted as killed.
    """
    env = {**os.environ, "LAB_FORCE_AGREE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(copy)}
    start = time.perf_counter()
    # Not the browser tests (marked book): they read a built book/, which a mutant does not rebuild.
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                "-p", "no:xdist", "-m", "not book", test_file], cwd=copy, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and the lessons or torchrun it started
        process.wait()
        return None, time.perf_counter() - start
    return code == 0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="TEXT", help="only mutants whose label or test file contains TEXT")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--blind", action="store_true", help="only the BLIND_MUTANTS (written without reading the tests)")
    parser.add_argument("--timeout-factor", type=float, default=4.0, metavar="K",
                        help="a mutated test file that runs longer than K times its unchanged run "
                        "(at least 60 s) is stopped and its mutant counted as killed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if not args.timeout_factor > 0:
        parser.error("--timeout-factor must be > 0")

    mutants = collect(args.only, blind_only=args.blind)
    broken = problems(mutants)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.test_file:<36} {mutant.label()}")
        print("\n".join(broken), file=sys.stderr)
        return 2 if broken else 0
    if broken or not mutants:
        print("\n".join(broken) or "no mutants", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mutate-") as folder:
        copies = []
        for job in range(args.jobs):
            copy = Path(folder) / f"copy{job}"
            shutil.copytree(ROOT, copy, ignore=IGNORED)
            copies.append(copy)

        test_files = sorted({m.test_file for m in mutants})
        print(f"baseline: {len(test_files)} test files, unchanged, checks forced to agree", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            baseline = list(pool.map(lambda i: run_tests(copies[i % args.jobs], test_files[i]),
                                     range(len(test_files))))
        failing = [name for name, (passed, _) in zip(test_files, baseline) if not passed]
        limits = {name: max(60.0, args.timeout_factor * seconds) for name, (_, seconds) in zip(test_files, baseline)}
        if failing:
            print(f"these test files fail without any mutant: {', '.join(failing)}", file=sys.stderr)
            return 2

        free = list(copies)

        def try_mutant(mutant: Mutant) -> tuple[Mutant, bool, float]:
            copy = free.pop()
            path = copy / mutant.target
            original = path.read_text()
            try:
                path.write_text(original.replace(mutant.old, mutant.new))
                passed, seconds = run_tests(copy, mutant.test_file, limits[mutant.test_file])
            finally:
                path.write_text(original)
                free.append(copy)
            return mutant, passed, seconds

        survivors = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for mutant, passed, seconds in pool.map(try_mutant, mutants):
                verdict = "timeout " if passed is None else "SURVIVED" if passed else "killed  "
                print(f"{verdict} {seconds:5.1f} s  {mutant.test_file:<34} {mutant.label()}", flush=True)
                if passed:
                    survivors.append(mutant)

    killed = len(mutants) - len(survivors)
    print(f"\nkilled {killed}/{len(mutants)} mutants ({100 * killed / len(mutants):.0f}%)")
    blind = [m for m in mutants if m.blind]
    if blind:
        blind_killed = len(blind) - sum(m.blind for m in survivors)
        print(f"of them blind (written without reading the tests): killed {blind_killed}/{len(blind)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
