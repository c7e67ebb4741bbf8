"""Retrieval models whose user and item sides share one EmbeddingBagCollection.

Matrix factorisation and SimpleX look users and items up in id tables of one collection (SimpleX
reads the user's history from the *item* table). A training step runs that collection once: the
user and item KeyedJaggedTensors are merged into one (see :func:`merged_kjt`), which also keeps
DDP (data-parallel tables) to one forward per backward.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from rankforge.models.inputs import normal_init
from rankforge.models.padded_embeddings import PaddedEmbeddingBags
from rankforge.models.retrieval import RetrievalModel, ebc_keys, merged_kjt


def id_table(
    name: str, feature_names: list[str], rows: int, dim: int, init_std: float | None
) -> EmbeddingBagConfig:
    # MEAN pooling: a single id pools to its own row, a list (a history) to its mean.
    return EmbeddingBagConfig(
        name=name,
        embedding_dim=dim,
        num_embeddings=rows,
        feature_names=feature_names,
        pooling=PoolingType.MEAN,
        init_fn=normal_init(init_std),
    )


class IdTableModel(RetrievalModel):
    """Shared mechanics; a subclass builds ``self.ebc`` (then calls :meth:`_collection_built`)
    and says how pooled user-side features become the user vector (:meth:`_user`)."""

    ebc: EmbeddingBagCollection

    def _collection_built(self) -> None:
        self.ebc_keys = ebc_keys(self.ebc)  # fixed at build: a sharded EBC no longer lists its configs

    @property
    def item_keys(self) -> list[str]:
        return ["item_id"]

    def _user(self, pooled: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        raise NotImplementedError

    def _pooled(self, *parts: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        return self.ebc(merged_kjt(list(parts), self.ebc_keys)).to_dict()

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._user(self._pooled(user_kjt), user_kjt.stride())

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._pooled(item_kjt)["item_id"][: item_kjt.stride()]

    def forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw user vectors ``[B, d]`` and item vectors ``[M, d]`` from one lookup; ``item_kjt``
        ``None`` looks up users only (the caller reads :meth:`item_table`)."""
        if item_kjt is None:
            return self.user_embedding(user_kjt), None
        pooled = self._pooled(user_kjt, item_kjt)  # one lookup per step
        return self._user(pooled, user_kjt.stride()), pooled["item_id"][: item_kjt.stride()]

    def item_table(self) -> torch.Tensor | None:
        bags = getattr(self.ebc, "embedding_bags", None)  # a sharded collection has none
        return None if bags is None else bags["t_item_id"].weight


class IdTwin(nn.Module):
    """One id -> its row, over a padded ``[B, 1]`` id matrix (for export)."""

    def __init__(self, ebc: EmbeddingBagCollection, feature: str) -> None:
        super().__init__()
        self.embeddings = PaddedEmbeddingBags(ebc, features=[feature])
        self.input_names = [feature]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings({self.input_names[0]: ids})[:, 0]
