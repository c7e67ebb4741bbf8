#!/usr/bin/env bash
# Multi-process training on one machine: N processes, one per GPU when there are GPUs (nccl),
# otherwise N CPU processes (gloo). The job picks backend and device from the environment.
#   bash infra/torchrun.sh NPROC CONFIG            e.g. bash infra/torchrun.sh 2 configs/retrieval.toml
#   RANKFORGE_DEVICE=cpu bash infra/torchrun.sh 2 CONFIG   # force CPU/gloo on a GPU host
# Several machines: run torchrun yourself with --nnodes/--node_rank/--rdzv-endpoint, same module.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${1:?usage: infra/torchrun.sh NPROC CONFIG}"
CONFIG="${2:?usage: infra/torchrun.sh NPROC CONFIG}"
VENV="${VENV:-.venv}"
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || [ "${RANKFORGE_DEVICE:-}" = "cpu" ]; then
  # CPU: keep the N processes from oversubscribing the cores with intra-op threads.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"
fi
exec "$VENV/bin/torchrun" --standalone --nproc_per_node="$NPROC" -m rankforge.cli train "$CONFIG"
