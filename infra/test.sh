#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the environment, a local Redis, lint and the
# type check, then pytest.
#   bash infra/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VENV="$VENV" bash infra/install.sh
"$VENV/bin/python" -m rankforge.infra.redis_server
# lint and type check first (seconds): CI fails on them as on a test
"$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && VENV="$VENV" bash infra/typecheck.sh
exec "$VENV/bin/python" -m pytest "$@"
