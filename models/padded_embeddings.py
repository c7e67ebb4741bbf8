"""An EmbeddingBagCollection twin over padded id matrices, for export and plain-torch inference.

TorchRec's EBC runs FBGEMM kernels that ONNX cannot express. This module computes the same pooled
embeddings with ``embedding`` + sum/mean, from the same weights, so the exported graph is
checked against the trained model rather than re-implemented by hand elsewhere.

Padding (``-1``) looks up a zero row appended to each table copy, so a pooled sum needs no mask
multiply over ``[batch, width, dim]``, and a width-1 feature (an id) no sum at all: measured on
the demo's ranker (200 rows, a 20-long history), ONNX Runtime's time per call fell from 467 to
282 us (``benchmarks/onnx_graphs.py``; ``benchmarks/README.md``, "the graphs' padding and the
item joins").
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.modules.embedding_configs import PoolingType


class PaddedEmbeddingBags(nn.Module):
    def __init__(
        self,
        ebc: EmbeddingBagCollection,
        state: dict[str, torch.Tensor] | None = None,
        features: list[str] | None = None,
    ) -> None:
        """Copy the tables of ``ebc`` (or of ``state``, an unsharded EBC state dict); with
        ``features``, only those features (in EBC order), e.g. one side of a shared collection."""
        super().__init__()
        state = state if state is not None else ebc.state_dict()
        self.feature_names: list[str] = []
        self._mean: list[bool] = []
        self.tables = nn.ParameterList()  # each table's rows, then one zero row that padding reads
        for config in ebc.embedding_bag_configs():
            weight = state[f"embedding_bags.{config.name}.weight"].detach().clone().float().cpu()
            padded = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])
            for feature in config.feature_names:
                if features is not None and feature not in features:
                    continue
                self.feature_names.append(feature)
                self._mean.append(config.pooling == PoolingType.MEAN)
                self.tables.append(nn.Parameter(padded, requires_grad=False))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings ``[batch, n_features, dim]`` in EBC feature order, from padded id
        matrices ``[batch, width]`` (``-1`` = padding; an all-padding row pools to zeros)."""
        pooled = []
        for name, is_mean, table in zip(self.feature_names, self._mean, self.tables, strict=True):
            ids = features[name]
            valid = ids >= 0
            rows = nn.functional.embedding(torch.where(valid, ids, table.shape[0] - 1), table)
            if ids.shape[1] == 1:  # one id: its row is its sum and its mean
                pooled.append(rows[:, 0])
                continue
            summed = rows.sum(dim=1)
            pooled.append(summed / valid.sum(dim=1, keepdim=True).clamp(min=1) if is_mean else summed)
        return torch.stack(pooled, dim=1)
