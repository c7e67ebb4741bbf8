"""Build hook: generate the gRPC modules from ``serving/proto`` before packaging.

Everything else about the package lives in ``pyproject.toml``; this file only swaps in a
``build_py`` that runs ``grpc_tools.protoc`` (a build requirement), so ``pip install .`` and
``pip install -e .`` both leave the generated modules next to the ``.proto`` they come from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

CODEGEN = Path(__file__).resolve().parent / "serving" / "proto" / "codegen.py"


def _load_codegen() -> ModuleType:
    # By file path: the rankforge package is what is being built, so it cannot be imported yet.
    spec = importlib.util.spec_from_file_location("_rankforge_proto_codegen", CODEGEN)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {CODEGEN}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        written = _load_codegen().generate()
        self.announce(f"generated {len(written)} gRPC module(s) from serving/proto", level=2)
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
