#!/usr/bin/env bash
# Installs rankforge and its pinned stack into a fresh virtual environment (default: .venv).
# Safe to re-run: an existing environment is reused and brought up to the pins.
#   VENV=/path/to/venv infra/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" "setuptools>=75" wheel
# torch first and alone, so that no other package's looser requirement selects a CUDA build.
TORCH_PIN=$("$VENV/bin/python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if re.match(r"torch\s*==", d)))
PY
)
"${PIP[@]}" install -q "$TORCH_PIN"
"${PIP[@]}" install -q -e ".[dev]"
# Packages pinned in [tool.rankforge.no-deps]: installed without their declared requirements
# (torchrec's metadata asks for the CUDA fbgemm-gpu; the CPU build is in the dependencies instead).
"$VENV/bin/python" - <<'PY' | while read -r spec; do "${PIP[@]}" install -q --no-deps "$spec"; done
import tomllib
for name, version in tomllib.load(open("pyproject.toml", "rb"))["tool"]["rankforge"]["no-deps"].items():
    print(f"{name}=={version}")
PY
"$VENV/bin/python" -c "import torch, torchrec, fbgemm_gpu, rankforge; print('rankforge ready: torch', torch.__version__, 'torchrec', torchrec.__version__)"
