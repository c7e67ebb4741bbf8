#!/usr/bin/env bash
# mypy over the installed package. The architecture folders install as rankforge.<folder>
# (setuptools package-dir), which mypy cannot follow, so it checks a tree of symlinks laid out
# as the package is imported: build/typecheck/rankforge/{cli.py, ..., features -> ../../features}.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TREE=build/typecheck
rm -rf "$TREE"
mkdir -p "$TREE/rankforge"
for f in rankforge/*.py; do ln -s "../../../$f" "$TREE/rankforge/$(basename "$f")"; done
ln -s ../../../rankforge/commands "$TREE/rankforge/commands"
for folder in features models evaluation bundles training serving pipelines infra benchmarks; do
  ln -s "../../../$folder" "$TREE/rankforge/$folder"
done
exec "$VENV/bin/mypy" --config-file pyproject.toml -p rankforge --python-executable "$VENV/bin/python" \
  --no-site-packages "$@" 2>&1 | sed "s#$TREE/##"
