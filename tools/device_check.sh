#!/usr/bin/env bash
# tools/device_check.sh: the CUDA checks of issue 15 (--fast as one CUDA graph per epoch), in ONE run,
# for a session that has a GPU (an H100 or H200 with the image's own python3 and torch 2.11, no network).
#
#   bash tools/device_check.sh            # from the repository root; everything goes to stdout
#
# What it runs, in this order, each step under its own `timeout` so that the whole stays under about
# 8 minutes (cold torch.compile runs are the slow part: the issue measured 47 s for one on 16 cores):
#   1. the machine: nvidia-smi, python3, torch and its CUDA build                             (<= 40 s)
#   2. the CUDA tests of the trainer files, `-k cuda` (they skip on a machine without CUDA):
#      tests/test_fitting.py and tests/test_train.py                                        (<= 180 s)
#   3. bench row 3 on CUDA, at n = 2^22 (the issue's goal: 3c <= 2x the floor) and n = 2^26: every
#      figure from CUDA events, the floor's included; the CPU side of the bench is left out  (<= 150 s)
#   4. the trainer: --fast at n = 2^22 for 200 epochs (setup time, ms/epoch, pay-off line), then the
#      default loop at the same size, for the per-epoch figure from the same card           (<= 105 s)
#   5. bench rows 2, 7 and 8 with --device cuda, if the time used so far leaves room        (<= 60 s)
# Set PYTHON to use another interpreter (default: python3, the one holding PyTorch on those machines).
# Where OUT is set (the device tool's output folder), the whole log is also written to $OUT/device_check.log.
# The exit code is the number of steps that failed or ran out of time (0: all passed).

set -u
cd "$(dirname "$0")/.." || exit 99
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec > >(tee "$OUT/device_check.log") 2>&1
else
    exec 2>&1
fi

BUDGET=480  # seconds for the whole script: steps 1-4 take at most 475 in all; step 5 runs only if 60 are left
failed=0
step() {  # step SECONDS TITLE COMMAND...: run under a timeout, say how it ended
    local limit=$1 title=$2
    shift 2
    echo
    echo "=== $title (timeout ${limit} s; ${SECONDS} s used so far) ==="
    timeout --kill-after=10 "$limit" "$@"
    local code=$?
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        echo "=== $title: TIMED OUT after ${limit} s ==="
        failed=$((failed + 1))
    elif [ "$code" -ne 0 ]; then
        echo "=== $title: exit code $code ==="
        failed=$((failed + 1))
    else
        echo "=== $title: ok ==="
    fi
}

MACHINE='
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda,
      "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
'
step 20 "1a. the GPU" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 20 "1b. python and torch" "$PYTHON" -c "$MACHINE"

step 180 "2. CUDA tests (-k cuda)" "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k cuda \
    tests/test_fitting.py tests/test_train.py

ROW3='
import sys, torch
from bench.rows import epoch
for n in (2**22, 2**26):
    for row in epoch.epoch(torch.device("cuda"), n, repeats=11):
        f = row.cpu  # the row function fills .cpu; python -m bench moves a CUDA run into .cuda
        ratio = "" if f.ratio is None else f"{f.ratio:.3g}x"
        reference = "" if f.reference is None else f"{f.reference:.4g} {f.unit}"
        met = {True: "ok", False: "MISS", None: ""}[f.met]
        print(f"{row.key}  {row.what}  goal {row.goal}:  {f.value:.4g} {f.unit}  floor/ref {reference}  "
              f"ratio {ratio}  {met}  {f.note}", flush=True)
'
step 150 "3. bench row 3 on CUDA, n = 2^22 and 2^26 (CUDA events)" "$PYTHON" -c "$ROW3"

step 75 "4a. trainer --fast, n = 2^22, 200 epochs" "$PYTHON" -m tensor_features.train --device cuda --fast \
    --n 4194304 --epochs 200
step 30 "4b. trainer default loop, n = 2^22, 200 epochs" "$PYTHON" -m tensor_features.train --device cuda \
    --n 4194304 --epochs 200 --update manual

if [ $((BUDGET - SECONDS)) -ge 60 ]; then
    step 60 "5. bench rows 2, 7, 8 with --device cuda (the CPU side runs first)" "$PYTHON" -m bench --rows 2,7,8 \
        --device cuda --repeats 5
else
    echo
    echo "=== 5. bench rows 2, 7, 8: skipped, ${SECONDS} s of ${BUDGET} used ==="
fi

echo
echo "=== done in ${SECONDS} s; ${failed} step(s) failed or timed out ==="
exit "$failed"
