#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the environment, a local Redis, then pytest.
#   bash infra/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VENV="$VENV" bash infra/install.sh
"$VENV/bin/python" -m rankforge.infra.redis_server
exec "$VENV/bin/python" -m pytest "$@"
