"""The import layering of ARCHITECTURE.md, checked on every module (function-level imports too):
a package imports only packages of lower layers, and of those only the ones its table row's "may
import" column names (core everywhere), so the layering cannot quietly regress."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: package -> layer; a module may import its own package and packages of strictly lower layers.
LAYERS: dict[str, int] = {
    "core": 0,  # rankforge.errors, config_errors, settings, quiet, phase_clock, processes
    "features": 1,
    "models": 2,
    "evaluation": 2,
    "bundles": 3,
    "training": 4,
    "serving": 4,
    "pipelines": 5,
    "infra": 5,
    "benchmarks": 6,
    "commands": 7,  # rankforge.cli and rankforge.commands: the entry points
}
CORE = {"errors", "config_errors", "settings", "quiet", "phase_clock", "processes"}
FOLDERS = [
    "features",
    "models",
    "evaluation",
    "bundles",
    "training",
    "serving",
    "pipelines",
    "infra",
    "benchmarks",
    "rankforge",
]


def _package(module: str) -> str | None:
    """The layer package of a ``rankforge.*`` module name."""
    parts = module.split(".")
    if parts[0] != "rankforge":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in CORE:
        return "core"
    if parts[1] in ("cli", "commands"):
        return "commands"
    return parts[1]


def _own_package(path: Path) -> str:
    folder = path.relative_to(REPO).parts[0]
    if folder == "rankforge":
        return "commands" if path.stem == "cli" or "commands" in path.parts else "core"
    return folder


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _cross_imports() -> Iterator[tuple[str, str, str, str]]:
    """(file, its package, an imported rankforge module, that module's package) for every import
    of another package, in every module of every layer folder (generated protobuf aside)."""
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "proto" in path.parts:
                continue
            mine = _own_package(path)
            for module in _imports(path):
                theirs = _package(module)
                if theirs is not None and theirs != mine:
                    yield str(path.relative_to(REPO)), mine, module, theirs


def test_no_package_imports_a_higher_or_parallel_layer() -> None:
    violations = []
    for where, mine, module, theirs in _cross_imports():
        assert theirs in LAYERS, f"{module} is in no layer: add its package to LAYERS"
        if LAYERS[theirs] >= LAYERS[mine]:
            violations.append(f"{where} ({mine}) imports {module} ({theirs})")
    assert not violations, "\n".join(violations)


def _may_import() -> dict[str, set[str] | None]:
    """ARCHITECTURE.md's layer table, read as the declaration it is: package -> the packages its
    "may import" column names (None: everything below it); core is importable everywhere."""
    allowed: dict[str, set[str] | None] = {}
    for line in (REPO / "ARCHITECTURE.md").read_text().splitlines():
        if not re.match(r"^\| \d \|", line):
            continue
        _layer, package, _holds, may = (cell.strip() for cell in line.strip("|").split("|"))
        name = (
            "core"
            if package.startswith("core")
            else "commands"
            if "cli.py" in package
            else re.search(r"`(\w+)/`", package).group(1)  # type: ignore[union-attr]
        )
        everything = may.startswith("everything")
        allowed[name] = None if everything else {m.strip() for m in may.split(",") if m.strip() != "—"}
    return allowed


def test_no_package_imports_what_its_may_import_column_leaves_out() -> None:
    """Lower is not enough: evaluation (layer 2) must not import features (layer 1), serving not
    evaluation, and so on, as ARCHITECTURE.md's table says."""
    allowed = _may_import()
    assert set(allowed) == set(LAYERS), "ARCHITECTURE.md's table and LAYERS name other packages"
    violations = [
        f"{where} ({mine}) imports {module} ({theirs})"
        for where, mine, module, theirs in _cross_imports()
        if theirs != "core" and allowed[mine] is not None and theirs not in allowed[mine]  # type: ignore[operator]
    ]
    assert not violations, "\n".join(violations)


def test_every_package_folder_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(LAYERS) | {"rankforge"}, packages - set(LAYERS)


def test_evaluating_a_bundle_loads_neither_torchrec_nor_the_exporter() -> None:
    """``rankforge evaluate`` scores bundles through ONNX Runtime: importing its job must not pull
    in TorchRec (about 3 s of start-up) or the ONNX exporter."""
    import subprocess
    import sys

    code = (
        "import sys, rankforge.pipelines.evaluate, rankforge.pipelines.promote; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchrec' "
        "or m in ('rankforge.bundles.export', 'rankforge.pipelines.train'))[:5])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
