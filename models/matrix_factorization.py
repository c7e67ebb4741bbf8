"""Pure matrix factorisation: one embedding table for users, one for items, nothing else.

The model of MF-BPR (Rendle et al. 2009) and of SimpleX's "MF-CCL" (Mao et al. 2021, Table 3):
``score(u, i) = sim(e_u, e_i)``. Both tables live in one EmbeddingBagCollection so a training
step is one lookup (users and items merged into one KeyedJaggedTensor).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from rankforge.models.padded_embeddings import PaddedEmbeddingBags
from rankforge.models.retrieval import RetrievalModel, ebc_keys, merged_kjt
from rankforge.models.scoring import DOT, Scoring


def normal_init(std: float | None):
    """``N(0, std)`` table init (the papers' choice), or TorchRec's default uniform for ``None``."""
    if std is None:
        return None
    return lambda weight: nn.init.normal_(weight, 0.0, std)


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


class MatrixFactorization(RetrievalModel):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        scoring: Scoring = DOT,
        init_std: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.scoring = scoring
        self.output_dim = embedding_dim
        self.ebc = EmbeddingBagCollection(
            tables=[
                id_table("t_user_id", ["user_id"], n_users, embedding_dim, init_std),
                id_table("t_item_id", ["item_id"], n_items, embedding_dim, init_std),
            ],
            device=device,
        )
        self.ebc_keys = ebc_keys(self.ebc)  # fixed at build: a sharded EBC no longer lists its configs

    @property
    def user_keys(self) -> list[str]:
        return ["user_id"]

    @property
    def item_keys(self) -> list[str]:
        return ["item_id"]

    def _pooled(self, *parts: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        return self.ebc(merged_kjt(list(parts), self.ebc_keys)).to_dict()

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._pooled(user_kjt)["user_id"][: user_kjt.stride()]

    def item_embedding(self, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self._pooled(item_kjt)["item_id"][: item_kjt.stride()]

    def forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self._pooled(user_kjt, item_kjt)  # one lookup per step
        return pooled["user_id"][: user_kjt.stride()], pooled["item_id"][: item_kjt.stride()]

    def portable(self, side: str) -> nn.Module:
        return _IdTwin(self.ebc, "user_id" if side == "user" else "item_id")


class _IdTwin(nn.Module):
    """One id -> its row, over a padded ``[B, 1]`` id matrix."""

    def __init__(self, ebc: EmbeddingBagCollection, feature: str) -> None:
        super().__init__()
        self.embeddings = PaddedEmbeddingBags(ebc, features=[feature])
        self.input_names = [feature]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings({self.input_names[0]: ids})[:, 0]
