#!/usr/bin/env bash
# Issue 8's ratio: the original AxBench (run.sh, no_grad.yaml: DiffMean, PCA, LAT) and axjax's detect doing the
# same closed-form detection work on the same data, one after the other on an otherwise quiet machine; each
# side's wall time includes its model loads.
#
#   closed_form_race.sh AXBENCH_SRC MODEL_DIR DATA_DIR LAYER OUT_DIR
#
# DATA_DIR: an AxBench folder (e.g. make_subset.py --concepts 2 ... for two concepts); OUT_DIR must not exist.
# Env: PYTHON (AxBench's venv python, passed to run.sh), AXJAX_PYTHON (default: python).
set -euo pipefail
if [ $# -ne 5 ]; then sed -n 2,9p "$0" >&2; exit 2; fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DATA=$(cd "$3" && pwd)
OUT=$5
[ -e "$OUT" ] && { echo "$OUT exists: give a new OUT_DIR" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
t0=$(date +%s)
"$HERE/run.sh" "$1" "$2" "$DATA" "$4" "$OUT/axbench" no_grad.yaml > "$OUT/axbench.log" 2>&1
t1=$(date +%s)
(cd "$REPO" && HF_HUB_OFFLINE=1 "${AXJAX_PYTHON:-python}" -m experiments.detect --data="$DATA" --layer="$4" \
  --methods=DiffMean,PCA,LAT --output_dir="$OUT/axjax") > "$OUT/axjax.log" 2>&1
t2=$(date +%s)
echo "AxBench $((t1 - t0)) s, axjax $((t2 - t1)) s: axjax $(( (t1 - t0) * 10 / (t2 - t1) / 10 )).$(( (t1 - t0) * 10 / (t2 - t1) % 10 ))x faster" \
  | tee "$OUT/race.txt"
