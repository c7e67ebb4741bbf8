"""Model construction and the loss-computing wrappers that DMP shards and trains.

DDP only synchronises gradients of what runs through its ``forward``, so the loss is computed
inside the wrapped module: the two-tower's separate user/item calls and the objective all happen
in one ``forward`` call on the DMP.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from rankforge.features.pipeline import PreparedData
from rankforge.models.cascade import CascadeModel
from rankforge.models.inputs import sparse_features
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import DOT, Scoring
from rankforge.models.simplex import SimpleX
from rankforge.models.two_tower import TwoTower
from rankforge.pipelines.train_config import ModelConfig
from rankforge.training.auction_batches import AuctionBatch
from rankforge.training.batches import CascadeBatch, RankingBatch, RetrievalBatch

Model = RetrievalModel | RankingModel | CascadeModel


def build_model(
    config: ModelConfig,
    data: PreparedData,
    device: torch.device | None = None,
    scoring: Scoring = DOT,
) -> Model:
    """The plain model for this config and data; ``device=meta`` leaves the tables for DMP.

    ``scoring`` is the similarity the objective trains with (``Scoring.of(objective)``); a
    retrieval model keeps it, and everything that scores the model afterwards reads it there.
    """
    users, items = sparse_features(data.inputs, "user"), sparse_features(data.inputs, "item")

    def two_tower() -> TwoTower:
        return TwoTower(
            users, items, config.embedding_dim, tuple(config.tower_sizes), device=device, scoring=scoring
        )

    def ranker() -> RankingModel:
        dense, over = tuple(config.dense_sizes), tuple(config.over_sizes)
        return RankingModel(
            users + items, data.inputs.dense_features, config.embedding_dim, dense, over, device=device
        )

    if config.kind == "popularity":
        raise ValueError("model kind 'popularity' is counted from the data, not built for training")
    dim, init = config.embedding_dim, config.init_std
    if config.kind == "retrieval":
        return two_tower()
    if config.kind == "mf":
        return MatrixFactorization(data.n_users, data.n_items, dim, scoring, init, device=device)
    if config.kind == "simplex":
        return SimpleX(
            data.n_users, data.n_items, dim, config.gamma, config.dropout, scoring, init, device=device
        )
    if config.kind in ("ranking", "auction"):
        return ranker()
    return CascadeModel(two_tower(), ranker())


class RetrievalTask(nn.Module):
    """Retrieval model forward + a ``retrieval`` objective; positives and negatives share one item
    pass. ``embedding_l2`` adds ``l2 * (sum of squared looked-up vectors) / batch`` — the batch L2
    regulariser of LightGCN and SimpleX (only rows a batch touches are penalised)."""

    def __init__(
        self, model: RetrievalModel, loss: nn.Module, shared_negatives: bool, embedding_l2: float = 0.0
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.shared_negatives = shared_negatives
        self.embedding_l2 = float(embedding_l2)

    def forward(
        self, user: KeyedJaggedTensor, items: KeyedJaggedTensor, neg_mask: torch.Tensor
    ) -> torch.Tensor:
        user_emb, item_emb = self.model(user, items)
        b = user_emb.shape[0]
        pos, neg = item_emb[:b], item_emb[b:]
        if not self.shared_negatives:
            neg = neg.reshape(b, -1, neg.shape[-1])
        loss = self.loss(user_emb, pos, neg, neg_mask)
        if self.embedding_l2 > 0:
            loss = loss + self.embedding_l2 * (user_emb.square().sum() + item_emb.square().sum()) / b
        return loss


class RankingTask(nn.Module):
    """DLRM forward + a ``ctr`` objective."""

    def __init__(self, model: RankingModel, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self,
        dense: torch.Tensor,
        sparse: KeyedJaggedTensor,
        labels: torch.Tensor,
        reference_logits: torch.Tensor,
        reference_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.loss(self.model(dense, sparse), labels, reference_logits, reference_mask)


class CascadeTask(nn.Module):
    """Both stages score the same candidate lists; a ``cascade`` objective (LCRON) trains them as one."""

    def __init__(self, model: CascadeModel, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self,
        user: KeyedJaggedTensor,
        items: KeyedJaggedTensor,
        dense: torch.Tensor,
        sparse: KeyedJaggedTensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        b, m = labels.shape
        # the retrieval stage's own scoring function (the one it is exported and served with)
        query = self.model.retrieval.query(user)
        candidates = self.model.retrieval.candidate(items).reshape(b, m, -1)
        retrieval_scores = (query.unsqueeze(1) * candidates).sum(-1)
        ranking_scores = self.model.ranker(dense, sparse).reshape(b, m)
        return self.loss(retrieval_scores, ranking_scores, labels, mask)


class AuctionTask(RankingTask):
    """DLRM pCTR for every ad of a batch of auctions, ``[A, M]``, and an ``auction`` objective
    (welfare rankloss, with a teacher's logits when one is named) or a ``ctr`` one (BCE over the
    shown ads)."""

    def forward(  # type: ignore[override]
        self,
        dense: torch.Tensor,
        sparse: KeyedJaggedTensor,
        labels: torch.Tensor,
        bids: torch.Tensor,
        mask: torch.Tensor,
        teacher_logits: torch.Tensor,
        has_teacher: bool,
    ) -> torch.Tensor:
        logits = self.model(dense, sparse).reshape(labels.shape)
        if getattr(self.loss, "kind", None) == "auction":
            return self.loss(logits, labels, bids, mask, teacher_logits if has_teacher else None)
        return self.loss(logits[mask], labels[mask])


def make_task(
    model: Model,
    loss: nn.Module,
    shared_negatives: bool = False,
    embedding_l2: float = 0.0,
    auctions: bool = False,
) -> nn.Module:
    if auctions:
        assert isinstance(model, RankingModel)
        return AuctionTask(model, loss)
    if isinstance(model, RetrievalModel):
        return RetrievalTask(model, loss, shared_negatives, embedding_l2)
    if isinstance(model, CascadeModel):
        return CascadeTask(model, loss)
    return RankingTask(model, loss)


def task_inputs(batch: RetrievalBatch | RankingBatch | CascadeBatch | AuctionBatch) -> tuple:
    """The positional arguments of the matching task's ``forward``."""
    if isinstance(batch, AuctionBatch):
        return (
            batch.dense,
            batch.sparse,
            batch.labels,
            batch.bids,
            batch.mask,
            batch.teacher_logits,
            batch.has_teacher,
        )
    if isinstance(batch, RetrievalBatch):
        return batch.user, batch.items, batch.neg_mask
    if isinstance(batch, CascadeBatch):
        return batch.user, batch.items, batch.dense, batch.sparse, batch.labels, batch.mask
    return batch.dense, batch.sparse, batch.labels, batch.reference_logits, batch.reference_mask
