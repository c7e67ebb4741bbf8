#!/usr/bin/env bash
# Start a local Redis (if none answers), materialise features, then serve on loopback.
#   bash infra/start_server.sh                                   # registry champions (MLflow under ./runs)
#   RETRIEVAL=path/to/retrieval-bundle RANKER=path/to/ranker-bundle bash infra/start_server.sh
#   DATA_CONFIG=configs/data.yaml PORT=50051 bash infra/start_server.sh
# Then: .venv/bin/rankforge query --user 1 --k 10 ; stop with Ctrl-C or SIGTERM (graceful).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
RETRIEVAL="${RETRIEVAL:-models:/rankforge-retrieval@champion}"
RANKER="${RANKER:-models:/rankforge-ranker@champion}"
PORT="${PORT:-50051}"
"$VENV/bin/python" -m rankforge.infra.redis_server
if [ "${SKIP_MATERIALIZE:-0}" != "1" ]; then
  "$VENV/bin/rankforge" materialize ${DATA_CONFIG:+--data-config "$DATA_CONFIG"}
fi
exec "$VENV/bin/rankforge" serve --retrieval "$RETRIEVAL" --ranker "$RANKER" --host 127.0.0.1 --port "$PORT"
