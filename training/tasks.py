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
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.models.scoring import DOT, Scoring
from rankforge.training.auction_batches import AuctionBatch
from rankforge.training.batches import CascadeBatch, RankingBatch, RetrievalBatch
from rankforge.training.config import ModelConfig
from rankforge.training.model_kinds import Batching
from rankforge.training.objectives._retrieval import RetrievalObjective
from rankforge.training.sampled_scores import SampledPattern, sampled_scores, unit_rows

Model = RetrievalModel | RankingModel | CascadeModel


def build_model(
    config: ModelConfig,
    data: PreparedData,
    device: torch.device | None = None,
    scoring: Scoring = DOT,
) -> Model:
    """The plain model for this config and data (its kind's builder, ``training.model_kinds``);
    ``device=meta`` leaves the tables for DMP.

    ``scoring`` is the similarity the objective trains with (``Scoring.of(objective)``); a
    retrieval model keeps it, and everything that scores the model afterwards reads it there.
    """
    kind = config.declared
    if kind.build is None:
        raise ValueError(f"model kind {kind.name!r} is counted from the data, not built for training")
    return kind.build(config, data, device, scoring)


class RetrievalTask(nn.Module):
    """Retrieval model forward + a ``retrieval`` objective's :meth:`from_scores`; the task
    computes the scores in the model's similarity, in one of three layouts:

    * per-example negatives over the catalogue (a :class:`SampledPattern` with ``items`` None):
      the model's whole item table is the candidate matrix (normalised once per step), and row
      ``b`` scores its positive and its own negatives through :func:`sampled_scores`;
    * per-example negatives over distinct candidates (a pattern and ``items``): the batch's
      distinct candidates ``[U]`` are looked up once, then scored the same way;
    * a shared pool (no pattern): ``items`` are the ``B`` positives then the ``N`` shared
      negatives; negatives score by one ``[B, D] x [D, N]`` product.

    None of them materialises a ``[B, 1 + N, D]`` copy. User vectors go through
    :meth:`RetrievalModel.training_query` (normalised, then the model's dropout).
    ``embedding_l2`` adds ``l2 * (sum of squared looked-up vectors) / batch`` — the batch L2
    regulariser of LightGCN and SimpleX (only rows a batch scores are penalised, each as often as
    the batch scores it)."""

    def __init__(self, model: RetrievalModel, loss: RetrievalObjective, embedding_l2: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.embedding_l2 = float(embedding_l2)

    def _normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        return unit_rows(vectors) if self.model.scoring.similarity == "cosine" else vectors

    def forward(
        self,
        user: KeyedJaggedTensor,
        items: KeyedJaggedTensor | None,
        neg_mask: torch.Tensor,
        pattern: SampledPattern | None = None,
    ) -> torch.Tensor:
        user_emb, item_emb = self.model(user, items)
        if item_emb is None:  # candidates over the whole catalogue
            item_emb = self.model.item_table()
            if item_emb is None or pattern is None:
                raise ValueError("a batch without items needs a pattern and a model with an item table")
        b = user_emb.shape[0]
        query = self.model.training_query(user_emb)
        candidates = self._normalise(item_emb)
        if pattern is not None:
            scores = sampled_scores(query, candidates, pattern)
            pos, neg = scores[:, 0], scores[:, 1:]
        else:
            pos = (query * candidates[:b]).sum(-1)
            neg = query @ candidates[b:].T
        loss = self.loss.from_scores(pos, neg, neg_mask)
        if self.embedding_l2 > 0:
            squares = item_emb.square().sum(-1)
            items_l2 = squares.sum() if pattern is None else (pattern.counts * squares).sum()
            loss = loss + self.embedding_l2 * (user_emb.square().sum() + items_l2) / b
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

    def forward(  # type: ignore[override]  # auction rows: the ranker task plus bids and a teacher
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


def make_task(model: Model, loss: nn.Module, batching: Batching, embedding_l2: float = 0.0) -> nn.Module:
    """The loss-computing wrapper of a model kind's batches (``ModelKind.batching``)."""
    if batching == "retrieval":
        assert isinstance(model, RetrievalModel) and isinstance(loss, RetrievalObjective)
        return RetrievalTask(model, loss, embedding_l2)
    if batching == "cascade":
        assert isinstance(model, CascadeModel)
        return CascadeTask(model, loss)
    assert isinstance(model, RankingModel)
    return AuctionTask(model, loss) if batching == "auction" else RankingTask(model, loss)


#: Any batch a trainer draws.
Batch = RetrievalBatch | RankingBatch | CascadeBatch | AuctionBatch


def task_inputs(batch: Batch) -> tuple:
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
        return batch.user, batch.items, batch.neg_mask, batch.pattern
    if isinstance(batch, CascadeBatch):
        return batch.user, batch.items, batch.dense, batch.sparse, batch.labels, batch.mask
    return batch.dense, batch.sparse, batch.labels, batch.reference_logits, batch.reference_mask
