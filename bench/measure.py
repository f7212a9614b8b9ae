"""How the bench measures: a whole process's wall time, and a whole process's peak memory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time

from tensor_features.lab.lessons import ROOT

MB = 2**20


def process_run(args: list[str]) -> tuple[float, int]:
    """Run `python ARGS` with its output discarded: (wall seconds, exit code)."""
    seconds, code, _ = process_run_output(args, keep=False)
    return seconds, code


def process_run_output(args: list[str], keep: bool = True) -> tuple[float, int, str]:
    """Run `python ARGS`: (wall seconds, exit code, its stdout, or "" when not kept).

    Kept output goes to a temporary file, not a pipe, so that reading it cannot slow the child down."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                 stdout=out if keep else subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        code = child.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        return seconds, code, out.read() if keep else ""


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
    """(peak resident memory in MiB, exit code) of `python -c CODE` or `python -m MODULE ARGS`."""
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", PEAK_RSS_WRAPPER, str(write_end), *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_end,))
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reported = pipe.read()
    code = child.wait()
    return (int(reported) / 1024 if reported else math.nan), code


def feature_bytes(n: int, degree: int) -> int:
    """Bytes of x (n), y (n) and Φ (n × degree), all float32."""
    return n * (2 + degree) * 4
