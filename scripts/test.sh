#!/usr/bin/env bash
# Installs what the tests need on a clean machine, then runs pytest.
# Extra arguments go to pytest (e.g. `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install-torch.sh
"$PY" -m pip install -q -e '.[test]'
exec "$PY" -m pytest "$@"
