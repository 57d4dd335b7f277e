#!/usr/bin/env bash
# The test suite (slow tests excluded; run them with: scripts/test.sh -m slow).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# One BLAS/OpenMP thread per process: the suite runs many small ops and a 2-process torchrun
# test; with 2 threads per process on 2 loaded cores it ran 4x slower (175 s vs 42 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
