#!/usr/bin/env bash
# The golden notebooks (tests/notebooks) checked with nbval on two float paths, side by side; `make test` runs it.
#
#   path 1: this machine's kernels and threads, in the checkout (as `pytest --nbval-lax ... tests/notebooks`);
#   path 2: torch's baseline (non-vectorised) kernels on one thread (SECOND_FLOATS; WMQ_GOLDEN_FLOATS="..." puts
#           other settings in their place, e.g. "ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE
#           ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=1" for MKL's and oneDNN's baseline paths too, about twice as
#           slow), in a scratch copy of the goldens whose WMQ_HOME keeps its results, calibrations and figures apart
#           from path 1's (the shipped checkpoints and the generated datasets are linked in), so each path prints
#           only what it computed.
#
# The smoke profile runs torch on one thread, so the two passes share two cores instead of queueing. Both must pass;
# path 2's report is printed after path 1's. tests/notebooks/conftest.py states the float tolerance.
# Usage: tests/check_goldens.sh PYTHON  (run from the repository root)
set -uo pipefail

PYTHON="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"  # absolute, the venv's own link kept
GOLDENS=tests/notebooks
read -r -a SECOND_FLOATS <<< "${WMQ_GOLDEN_FLOATS:-ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1}"
NBVAL=(-m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-sanitize-with
       "$GOLDENS/sanitize.cfg" "$GOLDENS")

if ! ls "$GOLDENS"/*.ipynb >/dev/null 2>&1; then
    echo "no golden notebooks in $GOLDENS yet: nbval check skipped (make goldens writes them)"
    exit 0
fi

scratch=$(mktemp -d)
mkdir -p data/datasets "$scratch/data" "$scratch/$GOLDENS"
ln -s "$PWD/data/checkpoints" "$PWD/data/datasets" "$scratch/data/"
cp "$GOLDENS"/*.ipynb "$GOLDENS/conftest.py" "$GOLDENS/sanitize.cfg" "$scratch/$GOLDENS/"
cp pyproject.toml "$scratch/"  # the same pytest settings, and the same test names as path 1
(cd "$scratch" && exec env WMQ_HOME="$scratch" "${SECOND_FLOATS[@]}" "$PYTHON" "${NBVAL[@]}") \
    >"$scratch/path2.log" 2>&1 &
path2=$!
# A background job ignores Ctrl-C: stop it (its kernels follow their parent) and remove the scratch copy on any exit.
trap 'kill "$path2" 2>/dev/null; rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

echo "goldens, float path 1 of 2: this machine's kernels and threads"
"$PYTHON" "${NBVAL[@]}"
status1=$?
wait "$path2"
status2=$?
echo "goldens, float path 2 of 2 (ran alongside): ${SECOND_FLOATS[*]}"
cat "$scratch/path2.log"
[ "$status1" -eq 0 ] && [ "$status2" -eq 0 ]
