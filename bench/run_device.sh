#!/usr/bin/env bash
# Run the full benchmark on another machine (no network needed) from wheels
# built beforehand, writing everything under one folder.
#
#   bash bench/run_device.sh WHEELS_DIR OUT_DIR [bench options...]
#
# WHEELS_DIR holds the ipcfast wheel (pip wheel . -w DIR --no-deps) and the
# wheels of cffi, pyzmq, iceoryx2, grpcio and matplotlib with their dependencies for
# that machine's Python (see "Running it elsewhere" in bench/README.md).
# Run it from a checkout: the C floor and the C core are compiled from this
# checkout's bench/*.c and csrc/ with cc (skipped with a note without one).
# Options after OUT_DIR go to the benchmark, e.g. --rounds 3 or --quick.
# $PYTHON picks the interpreter (default python3).
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
wheels=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Outside the checkout, so that python/ipcfast (no compiled module) is not
# what gets imported; a venv if the interpreter can make one, else a target dir.
if "$python" -m venv "$work/venv" >/dev/null 2>&1; then
    run_python="$work/venv/bin/python"
    "$run_python" -m pip install -q --no-index --find-links "$wheels" ipcfast
    for extra in pyzmq iceoryx2 grpcio matplotlib; do
        "$run_python" -m pip install -q --no-index --find-links "$wheels" "$extra" \
            || echo "note: $extra not installed (no wheel for this Python): its part is skipped" >&2
    done
else
    run_python="$python"
    "$python" -m pip install -q --no-index --find-links "$wheels" --target "$work/site" ipcfast
    for extra in pyzmq iceoryx2 grpcio matplotlib; do
        "$python" -m pip install -q --no-index --find-links "$wheels" --target "$work/site" "$extra" \
            || echo "note: $extra not installed (no wheel for this Python): its part is skipped" >&2
    done
    export PYTHONPATH="$work/site"
fi

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    echo "python: $("$run_python" -c 'import sys; print(sys.version)')"
    echo "nproc: $(nproc)"
    uname -a
    command -v lscpu >/dev/null && lscpu
    cat /proc/loadavg
    "$run_python" -m pip list 2>/dev/null || true
} > "$out/machine.txt" 2>&1

cd "$work"
"$run_python" "$root/bench/run.py" --source "$root" --out "$out" "$@" 2>&1 | tee "$out/run.log"
exit "${PIPESTATUS[0]}"
