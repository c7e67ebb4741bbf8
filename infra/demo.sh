#!/usr/bin/env bash
# The main job end to end on the embedded defaults: install, local Redis, then `rankforge demo`
# (features -> training -> evaluation -> MLflow registry -> Redis feature store -> gRPC query).
#   bash infra/demo.sh [rankforge demo args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VENV="$VENV" bash infra/install.sh
"$VENV/bin/python" -m rankforge.infra.redis_server
exec "$VENV/bin/rankforge" demo "$@"
