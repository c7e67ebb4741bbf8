"""Export trained models to ONNX and check the exported graph against torch.

Uses the torch.export-based exporter (the default since torch 2.9) with a dynamic batch axis.
Inputs are padded int64 id matrices (``-1`` = padding) and, for the ranker, a float32 dense matrix;
their names are stored in the ONNX graph, so the server binds features by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from rankforge.features.feature_spec import DENSE_INPUT
from rankforge.models.portable import RankerTwin, ScoringSpaceTwin
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    input_names: list[str]
    output_name: str


def export_module(
    module: nn.Module, inputs: dict[str, torch.Tensor], output_name: str, path: str | Path
) -> OnnxArtifact:
    """Export ``module(*inputs.values())`` with every input's first axis dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    names = list(inputs)
    args = tuple(inputs.values())
    module = module.eval()
    shapes = (tuple({0: batch} for _ in names),)  # twins take flat *inputs
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            input_names=names,
            output_names=[output_name],
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    return OnnxArtifact(path=path, input_names=names, output_name=output_name)


def export_retrieval_towers(
    model: RetrievalModel,
    user_batch: dict[str, torch.Tensor],
    item_batch: dict[str, torch.Tensor],
    directory: str | Path,
) -> tuple[OnnxArtifact, OnnxArtifact]:
    """``user_tower.onnx`` and ``item_tower.onnx``: ids -> vectors in the model's scoring space
    (normalised for cosine, queries over the temperature), so ``user . item`` is its score."""
    d = Path(directory)
    artifacts = []
    for side, batch in (("user", user_batch), ("item", item_batch)):
        twin = ScoringSpaceTwin(model, side)
        artifacts.append(
            export_module(twin, _ordered(batch, twin.input_names), "vector", d / f"{side}_tower.onnx")
        )
    return artifacts[0], artifacts[1]


def export_ranker(
    model: RankingModel, dense: torch.Tensor, sparse_batch: dict[str, torch.Tensor], path: str | Path
) -> OnnxArtifact:
    """``ranker.onnx``: (dense, sparse ids...) -> logit."""
    return export_module(
        RankerTwin(model), {DENSE_INPUT: dense, **_ordered(sparse_batch, model.sparse_keys)}, "logit", path
    )


def _ordered(batch: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"export inputs lack feature(s) {missing}")
    return {k: batch[k] for k in keys}


def run_onnx(path: str | Path, inputs: dict[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """Score with ONNX Runtime (CPU) — the same runtime the server uses."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs()}
    return session.run(None, feed)[0]


def max_abs_difference(path: str | Path, reference: torch.Tensor, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |onnx - torch| over the batch: the number export tests bound."""
    got = run_onnx(path, {k: v.numpy() for k, v in inputs.items()})
    return float(np.max(np.abs(got - reference.detach().cpu().numpy())))
