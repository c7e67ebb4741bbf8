"""Generate the Python gRPC modules from the ``.proto`` files with ``grpc_tools.protoc``.

Used by ``setup.py`` (at build/install time; loaded by file path, since the package is not
importable yet) and by this package's ``__init__`` (for a checkout that skipped the build), so it
imports nothing from rankforge.

protoc is run with ``-I`` at this folder, so descriptors keep their canonical file names
(``rankforge/v1/ranking.proto``, what reflection shows clients). The stubs it emits then import
their siblings absolutely (``from rankforge.v1 import ranking_pb2``), which would resolve against
the top-level ``rankforge`` package; those imports are rewritten to relative ones, so the modules
work wherever the package is installed (``rankforge.serving.proto.rankforge.v1``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTOS: tuple[str, ...] = ("rankforge/v1/ranking.proto",)
SUFFIXES: tuple[str, ...] = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_paths(proto: str, root: Path = ROOT) -> list[Path]:
    stem = root / proto[: -len(".proto")]
    return [stem.with_name(stem.name + suffix) for suffix in SUFFIXES]


def is_stale(root: Path = ROOT) -> bool:
    """True when a generated module is missing or older than its ``.proto``."""
    for proto in PROTOS:
        source = (root / proto).stat().st_mtime_ns
        for path in generated_paths(proto, root):
            if not path.is_file() or path.stat().st_mtime_ns < source:
                return True
    return False


def _relative_imports(text: str, proto: str) -> tuple[str, int]:
    package = ".".join(Path(proto).parent.parts)  # rankforge.v1
    pattern = re.compile(rf"^from {re.escape(package)} import (\w+_pb2) as ", re.MULTILINE)
    return pattern.subn(r"from . import \1 as ", text)


def generate(root: Path = ROOT) -> list[Path]:
    """Run protoc into a scratch folder, fix the imports, then move the files into place.

    Moving with ``os.replace`` means a concurrent importer never sees a half-written module.
    """
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - grpcio-tools is a build and runtime requirement
        raise RuntimeError("generating the gRPC modules needs grpcio-tools") from exc
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".codegen-", dir=root) as scratch:
        for proto in PROTOS:
            args = [
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{well_known}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                f"--grpc_python_out={scratch}",
                proto,
            ]
            code = protoc.main(args)
            if code != 0:
                raise RuntimeError(f"protoc failed (exit {code}) on {root / proto}")
            for target in generated_paths(proto, root):
                produced = Path(scratch) / target.relative_to(root)
                if not produced.is_file():
                    raise RuntimeError(f"protoc did not produce {produced.name} for {proto}")
                if target.name.endswith("_pb2_grpc.py"):
                    text, count = _relative_imports(produced.read_text(), proto)
                    if count == 0:
                        raise RuntimeError(f"{target.name}: no sibling import found to make relative")
                    produced.write_text(text)
                os.replace(produced, target)
                written.append(target)
    return written


def ensure_generated(root: Path = ROOT) -> bool:
    """Generate when stale; returns whether it did."""
    if not is_stale(root):
        return False
    generate(root)
    return True
