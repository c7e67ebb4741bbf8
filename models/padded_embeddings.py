"""An EmbeddingBagCollection twin over padded id matrices, for export and plain-torch inference.

TorchRec's EBC runs FBGEMM kernels that ONNX cannot express. This module computes the same pooled
embeddings with ``embedding`` + masked sum/mean, from the same weights, so the exported graph is
checked against the trained model rather than re-implemented by hand elsewhere.
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
        self.tables = nn.ParameterList()
        for config in ebc.embedding_bag_configs():
            weight = state[f"embedding_bags.{config.name}.weight"].detach().clone().float().cpu()
            for feature in config.feature_names:
                if features is not None and feature not in features:
                    continue
                self.feature_names.append(feature)
                self._mean.append(config.pooling == PoolingType.MEAN)
                self.tables.append(nn.Parameter(weight, requires_grad=False))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings ``[batch, n_features, dim]`` in EBC feature order."""
        pooled = []
        for name, is_mean, table in zip(self.feature_names, self._mean, self.tables, strict=True):
            ids = features[name]
            mask = (ids >= 0).unsqueeze(-1).to(table.dtype)
            summed = (nn.functional.embedding(ids.clamp(min=0), table) * mask).sum(dim=1)
            pooled.append(summed / mask.sum(dim=1).clamp(min=1.0) if is_mean else summed)
        return torch.stack(pooled, dim=1)
