"""`python LESSON.py --tries` and `--try N`: a lesson's "Try:" lines, listed or run on a copy.

--try N applies Try N's edit to a copy of the lesson in a temporary folder, prints the change as
a diff, runs the copy with the Try's flags (and the other flags given), and leaves the lesson
file untouched: the learner's own edits and the Try lines in the file stay as they were. Making
the edit by hand in the file works as before.
"""

from __future__ import annotations

import ast
import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tensor_features


def observation_numbers(source: str) -> dict[str, int]:
    """Observation function name -> its [n], from the order of the file's top-level lab.run(f) calls."""
    order: dict[str, int] = {}
    for node in ast.parse(source).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "run"
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "lab"
                and call.args and isinstance(call.args[0], ast.Name)):
            order.setdefault(call.args[0].id, len(order) + 1)
    return order


def lesson_tries(path: Path) -> list:
    """The lesson's TRIES list, read by importing the lesson inert (its lab runs nothing)."""
    from tensor_features.lab.lessons import load_lesson

    return list(getattr(load_lesson(path), "TRIES", []))


def describe(path: Path, tries: list) -> list[str]:
    numbers = observation_numbers(path.read_text(encoding="utf-8"))
    lines = []
    for index, attempt in enumerate(tries, 1):
        where = numbers.get(attempt.where.__name__) if attempt.where is not None else None
        gpu = "  (needs a GPU)" if attempt.needs_cuda else ""
        lines.append(f"  {index}. {attempt.text(where)}{gpu}")
    return lines


def list_tries(path: Path) -> int:
    tries = lesson_tries(path)
    print(f"Tries of {path.name} (run one on a copy, the file untouched: python {path.name} --try N):")
    print("\n".join(describe(path, tries)))
    return 0


def passed_on(argv: list[str], drop_device: bool) -> list[str]:
    """The command line without --try N and --tries (and without --device when the Try sets it)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif name in ("--try", "--tries") or (drop_device and name == "--device"):
            skip = "=" not in arg and name != "--tries"
        else:
            out.append(arg)
    return out


def run_try(path: Path, number: int, argv: list[str], prog: str) -> int:
    """Run Try `number` (1-based) on a copy of the lesson; return the copy's exit code."""
    try:
        tries = lesson_tries(path)
    except Exception as err:  # noqa: BLE001 - a lesson the learner is editing may not even load
        print(f"{prog}: error: --try {number}: the lesson does not load as it is now "
              f"({type(err).__name__}: {err}); undo your edit or use a fresh copy", file=sys.stderr)
        return 2
    if not 1 <= number <= len(tries):
        print(f"{prog}: error: --try {number}: this lesson has Try 1 to {len(tries)} (--tries lists them)",
              file=sys.stderr)
        return 2
    attempt = tries[number - 1]
    if attempt.needs_cuda:
        import torch

        if not torch.cuda.is_available():
            print(f"{prog}: error: --try {number} needs a GPU, and torch sees none", file=sys.stderr)
            return 2
    print(f"Try {number}: {describe(path, tries)[number - 1].split('. ', 1)[1]}")
    source = path.read_text(encoding="utf-8")
    try:
        edited = attempt.apply(source) if attempt.edit is not None else source
    except ValueError as err:  # the learner made this edit (or another) by hand already
        print(f"{prog}: error: Try {number}'s edit no longer applies ({err}); undo your edit of that line, "
              "or run the copy you edited as it is", file=sys.stderr)
        return 2
    diff = list(difflib.unified_diff(source.splitlines(), edited.splitlines(), f"{path.name}",
                                     f"{path.name} (the copy that runs)", n=1, lineterm=""))
    print("\n".join(diff) if diff else "(no edit: the same file, other flags)")
    flags = attempt.flags.split()
    command = [*flags, *passed_on(argv, drop_device="--device" in flags)]
    with tempfile.TemporaryDirectory(prefix="lab-try-") as folder:
        copy = Path(folder) / path.name
        copy.write_text(edited, encoding="utf-8")
        print(f"$ python {path.name} {' '.join(command)}  (the copy)\n", flush=True)
        # The copy lives outside the repository: it finds the package where this process did.
        package_parent = str(Path(tensor_features.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent,
                                                                          os.environ.get("PYTHONPATH")]))}
        code = subprocess.call([sys.executable, str(copy), *command], env=env)
    print(f"\nTry {number} ended with exit {code} ({exit_meaning(code)}). {path.name} is unchanged.")
    return code


def exit_meaning(code: int) -> str:
    """What a lesson's exit code says (Lab.finish, Lab.start and cli.run_main set them)."""
    return {0: "every check agreed", 1: "a check disagreed, or the copy stopped with an error above",
            2: "a bad flag or environment",
            130: "interrupted"}.get(code, "see above")
