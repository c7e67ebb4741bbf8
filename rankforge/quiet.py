"""Silence what a user of the CLI cannot act on: third-party deprecation chatter and start-up logs.

TorchRec, FBGEMM, torch.export/ONNX and MLflow log warnings about their own internals on every
job (planner topology, deprecated arguments they pass themselves, optional torchvision ops, store
migrations, artifact download bars). None of it is about the user's config or data, so the CLI
turns it off; rankforge's own warnings and errors, training progress bars and everything a library
reports as an error still show. Set ``RANKFORGE_VERBOSE=1`` to see it all again.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

#: Loggers whose warnings are about the library itself.
THIRD_PARTY_LOGGERS = (
    "torchrec",
    "fbgemm_gpu",
    "torch.distributed",
    "torch.fx",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "onnxscript",
    "mlflow.store.db.utils",
    "mlflow.pyfunc",
    "mlflow.models",
    "alembic",
)
#: Modules whose FutureWarning/DeprecationWarning/UserWarning concern their own internals.
THIRD_PARTY_MODULES = r"(torch|torchrec|fbgemm_gpu|onnxscript|onnx|mlflow|copyreg)(\.|$)"
#: Where those modules' files live: some log through the root logger (``logging.warning(...)``,
#: e.g. TorchRec's planner: "Sharding spec not found for model.ebc.t_user_id"), by file path.
THIRD_PARTY_FILES = re.compile(r"[/\\](torch|torchrec|fbgemm_gpu|onnxscript|onnx|mlflow)[/\\]")


class RootLogFromLibraries(logging.Filter):
    """Drops root-logger records below ERROR that a third-party library logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not THIRD_PARTY_FILES.search(record.pathname)


def quiet_third_party() -> None:
    if os.environ.get("RANKFORGE_VERBOSE"):
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY_MODULES)
    # Raised inside torch/torchrec but attributed to the caller's line (stacklevel): by message.
    warnings.filterwarnings("ignore", message=r".*(ShardedTensor|LeafSpec|broadcast_buffers).*")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, RootLogFromLibraries) for f in root.filters):
        root.addFilter(RootLogFromLibraries())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch's own "[rank0]:W..." lines (set before import)
