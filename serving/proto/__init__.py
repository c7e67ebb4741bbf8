"""The gRPC API (``rankforge/v1/ranking.proto``) and its generated Python modules.

The modules are generated at install time (``setup.py``); importing this package regenerates them
when they are missing or older than the ``.proto``, so a checkout that skipped the build, or an
edited ``.proto``, still imports. An installed copy that cannot be rewritten keeps its modules.
"""

from __future__ import annotations

import warnings

from rankforge.serving.proto import codegen

try:
    codegen.ensure_generated()
except (OSError, RuntimeError) as exc:
    if any(not p.is_file() for proto in codegen.PROTOS for p in codegen.generated_paths(proto)):
        raise ImportError(f"the gRPC modules are missing and could not be generated: {exc}") from exc
    warnings.warn(f"could not regenerate the gRPC modules, using the existing ones: {exc}", stacklevel=2)

from rankforge.serving.proto.rankforge.v1 import ranking_pb2, ranking_pb2_grpc

SERVICE_NAME: str = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name

__all__ = ["SERVICE_NAME", "ranking_pb2", "ranking_pb2_grpc"]
