"""make bench: what the lab's code costs, each figure beside a reference where it has one.

    python -m bench                      # every row; CUDA columns when a GPU is visible
    python -m bench --rows 2,3,4         # some rows only
    python -m bench --json bench.json    # the same figures as JSON
    python -m bench --markdown           # the table as Markdown (docs/performance.md's copy)

A figure's reference is another figure measured in the same run where one exists (this machine is
shared and noisy, so most goals are ratios, not times), else a computed bound, a byte count, or a
fixed goal (row 6: 180 s); some figures are reported without one. Each row's note and docstring say how its figures were taken (most times are medians;
row 2 takes the fastest of --repeats runs on one thread). The rows are listed below (one module
each under bench/rows/). Nothing here is a test: tests check that the bench runs, never its times.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import torch

from bench.rows import FAMILIES
from bench.table import Row, as_json, machine, render_markdown, render_text
from tensor_features.cli import (OneLineArgumentParser, add_device_argument, environment_problem, int_in_range, new_file,
                                 pick_device, run_main, whole_file)

ROWS = tuple(FAMILIES)


def row_help() -> str:
    """One line per row family: its number and the first sentence of its module docstring."""
    lines = []
    for number, family in FAMILIES.items():
        paragraph = " ".join((family.__doc__ or "").split("\n\n")[0].split())
        first = paragraph.split(": ", 1)[-1].split(". ")[0].rstrip(".") + "."
        lines += textwrap.wrap(first, 92, initial_indent=f"  {number:>2}  ", subsequent_indent="      ")
    return "\n".join(lines)


def row_list(text: str) -> list[int]:
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of row numbers") from None
    if not chosen or not set(chosen) <= set(ROWS):
        raise argparse.ArgumentTypeError(f"{text!r}: rows are {', '.join(map(str, ROWS))}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m bench", description=__doc__ + "\nRows:\n" + row_help(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=row_list, default=list(ROWS), help="which rows, e.g. 2,3,4 (default: all)")
    add_device_argument(parser)
    parser.add_argument("--n", type=int_in_range(16, 2**26), default=2**22,
                        help="data points for rows 3, 5, 10 and 11 (default: %(default)s = 2**22)")
    parser.add_argument("--size", type=int_in_range(2, 4096), default=256, help="layer size for row 2 (default: %(default)s)")
    parser.add_argument("--rounds", type=int_in_range(1, 50), default=3,
                        help="alternating process launches per lesson in row 1 (default: %(default)s)")
    parser.add_argument("--repeats", type=int_in_range(1, 1000), default=11,
                        help="timed repeats behind each in-process figure (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", type=new_file((".json",)),
                        help="also write the figures as JSON to PATH (a .json file in a folder that exists)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser

def measure(rows: list[int], device: torch.device, args) -> list[Row]:
    """All chosen rows on one device, in order."""
    out = []
    for number in rows:
        print(f"  row {number} on {device.type} ...", file=sys.stderr, flush=True)
        out += FAMILIES[number].measure(device, args)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    json_path = args.json  # checked by its type before any measuring: a .json file in a writable folder
    # Rows 3 and 5 compile (--fast); rows 1, 5 and 6 start lessons and the trainer, which append to LAB_SUMMARY.
    problem = environment_problem(compiles=bool({3, 5} & set(args.rows)))
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")

    info = machine()
    rows = measure(args.rows, torch.device("cpu"), args)
    if device.type == "cuda":
        by_key = {row.key: row for row in measure(args.rows, device, args)}
        for row in rows:
            if row.key in by_key:
                row.cuda = by_key[row.key].cpu
    print(render_markdown(rows, info) if args.markdown else render_text(rows, info))
    if json_path is not None:
        try:
            with whole_file(json_path) as partial:  # never a half-written .json (Ctrl-C, a full disk)
                partial.write_text(json.dumps(as_json(rows, info), indent=2, default=str) + "\n")
        except OSError as err:
            print(f"{parser.prog}: error: --json {json_path}: cannot write it ({err.strerror})", file=sys.stderr)
            return 1
        print(f"wrote {json_path}")
    missed = [row.key for row in rows if row.cpu is not None and row.cpu.met is False]
    if missed:
        print(f"goals missed on the CPU: {', '.join(missed)} (docs/performance.md explains the misses of a "
              "reference run on a 2-core CPU)")
    # A slow row is a finding; a wrong one (Jacobians that disagree, a process that failed) is an error.
    broken = [row.key for row in rows for f in (row.cpu, row.cuda)
              if f is not None and (f.met is False and row.goal.startswith("agree") or "exit code" in f.note)]
    if broken:
        print(f"broken: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
