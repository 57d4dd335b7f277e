#!/usr/bin/env bash
# The main job on the embedded default: synthetic benchmark -> train mlmcs -> evaluate -> report.
# Extra arguments go to `phraseground demo` (e.g. --out DIR, --model dsve).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/phraseground" demo "$@"
