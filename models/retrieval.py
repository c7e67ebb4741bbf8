"""What every retrieval model is: a user side and an item side that meet in one scoring function.

The two-tower, matrix factorisation and SimpleX differ only in how they turn ids into vectors.
Everything downstream (validation, export, the index, A/B, serving) talks to this interface:
``query``/``candidate`` give vectors in the model's scoring space (see
:mod:`rankforge.models.scoring`), ``portable(side)`` gives a plain-torch module over padded ids
for ONNX export, and ``user_keys``/``item_keys`` name the sparse inputs each side reads.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from rankforge.models.scoring import Scoring


class RetrievalModel(nn.Module):
    scoring: Scoring

    @property
    def user_keys(self) -> list[str]:
        raise NotImplementedError

    @property
    def item_keys(self) -> list[str]:
        raise NotImplementedError

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        """Raw user vectors ``[B, d]`` (what the objective sees)."""
        raise NotImplementedError

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        """Raw item vectors ``[M, d]``."""
        raise NotImplementedError

    def forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw user vectors ``[B, d]`` and item vectors ``[M, d]``; the item batch may differ in
        size (e.g. positives followed by sampled negatives)."""
        return self.user_embedding(user_kjt), self.item_embedding(item_kjt)

    def query(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        """User vectors in scoring space: ``query . candidate`` is the model's score."""
        return self.scoring.query(self.user_embedding(user_kjt))

    def candidate(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.scoring.candidate(self.item_embedding(item_kjt))

    def training_query(self, user: torch.Tensor) -> torch.Tensor:
        """What a training score is computed from: raw user vectors ``[B, d]`` normalised as the
        scoring function does (no temperature: an objective applies its own), then the model's
        ``query_dropout`` if it has one (SimpleX's and MF-CCL's dropout on the normalised user
        vector, as in the authors' code). Evaluation and serving use :meth:`query`."""
        query = self.scoring.normalise(user)
        dropout = self._modules.get("query_dropout")
        return dropout(query) if dropout is not None else query

    def portable(self, side: str) -> nn.Module:
        """A plain-torch module ``(*padded ids in side_keys order) -> raw vectors`` for export."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor | None:
        """Every item's raw vector ``[n_items, d]`` as one differentiable tensor, where the item
        side *is* an unsharded id table (matrix factorisation, SimpleX on replicated tables);
        ``None`` otherwise (a tower, or tables sharded by TorchRec)."""
        return None


def merged_kjt(parts: list[KeyedJaggedTensor], keys: list[str]) -> KeyedJaggedTensor:
    """One KJT over ``keys`` from KJTs of different batch sizes: every key is padded with empty
    bags to the largest stride, and keys no part has are empty. Lets a model whose user and item
    sides share one EmbeddingBagCollection (a shared item table) run it once per step."""
    stride = max(p.stride() for p in parts)
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in parts:
        for key, jagged in part.to_dict().items():
            found[key] = (jagged.lengths(), jagged.values())
    template = parts[0].values()
    lengths, values = [], []
    for key in keys:
        if key in found:
            length, value = found[key]
            lengths.append(nn.functional.pad(length, (0, stride - length.numel())))
            values.append(value)
        else:
            lengths.append(torch.zeros(stride, dtype=torch.int32, device=template.device))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=torch.cat(values) if values else template.new_empty(0),
        lengths=torch.cat([length.to(torch.int32) for length in lengths]),
    )


def ebc_keys(ebc: EmbeddingBagCollection) -> list[str]:
    """The collection's feature names in table order (the order its pooled output follows)."""
    return [name for config in ebc.embedding_bag_configs() for name in config.feature_names]
