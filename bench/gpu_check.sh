#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): one JSON on stdout, under 8 minutes on one H200.
#
#   bash bench/gpu_check.sh [--cpu --tiny] [--steps N]
#
# Offline and self-installing: it runs in the project's .venv when there is one (`make setup` made it); else
# in the system python, after installing the wheels in .whl/ (if any: copy them there from a machine with
# network, e.g. `pip download --no-deps -d .whl trl==<pin> datasets==<pin> ...` for the packages that python
# lacks) into a private folder. It never reaches the network.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        SITE="${TMPDIR:-/tmp}/conflux-gpu-check-site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_check.py "$@"
