"""Per-epoch validation of the unsharded model on the held-out split.

Runs on rank 0 with the plain model gathered for export, so the numbers logged each epoch are the
numbers of exactly what would be served. The metric definitions live in
``rankforge.evaluation.metrics``; this module only builds their inputs.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from rankforge.features.pipeline import PreparedData
from rankforge.models.cascade import CascadeModel
from rankforge.models.inputs import padded_to_kjt
from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower
from rankforge.training.batches import ITEM_KEYS, USER_KEYS, FeatureTables

KS = (10, 20)


def _column(frame, name: str) -> torch.Tensor:
    return torch.from_numpy(frame[name].to_numpy().copy())


@torch.no_grad()
def retrieval_validation(model: TwoTower, data: PreparedData, tables: FeatureTables) -> dict[str, float]:
    """Recall/NDCG@k of every test user's held-out positives against all items; items the user
    already interacted with in training are excluded, as they would be when serving."""
    from rankforge.evaluation.metrics import retrieval_metrics

    test = data.test_positives()
    users = torch.unique(_column(test, "user_idx"))
    if users.numel() == 0:
        return {}
    user_emb = model.user_embedding(padded_to_kjt(tables.users(users), USER_KEYS))
    item_emb = model.item_embedding(padded_to_kjt(tables.items(torch.arange(tables.n_items)), ITEM_KEYS))
    scores = user_emb @ item_emb.T
    relevant = torch.zeros(scores.shape, dtype=torch.bool)
    relevant[torch.searchsorted(users, _column(test, "user_idx")), _column(test, "item_idx")] = True
    train_users, train_items = _column(data.train_events, "user_idx"), _column(data.train_events, "item_idx")
    keep = torch.isin(train_users, users)
    exclude = torch.zeros(scores.shape, dtype=torch.bool)
    exclude[torch.searchsorted(users, train_users[keep]), train_items[keep]] = True
    return {k: float(v) for k, v in retrieval_metrics(scores, relevant, exclude, ks=KS).items()}


@torch.no_grad()
def ranking_validation(model: RankingModel, data: PreparedData, tables: FeatureTables) -> dict[str, float]:
    """AUC, LogLoss, ECE (and GAUC when users have both labels) on the labelled test events, with
    features joined as at serving time."""
    from rankforge.evaluation.metrics import gauc, ranking_metrics, sigmoid

    test = data.test_events
    users, items = _column(test, "user_idx"), _column(test, "item_idx")
    labels = _column(test, "label").numpy()
    if labels.min() == labels.max():
        warnings.warn("test events have a single label: no ranking metrics", stacklevel=2)
        return {}
    sparse = padded_to_kjt({**tables.users(users), **tables.items(items)}, USER_KEYS + ITEM_KEYS)
    probs = sigmoid(model(tables.dense(users, items), sparse).numpy())
    metrics = ranking_metrics(labels, probs)
    with contextlib.suppress(ValueError):  # e.g. leave-one-out: one test event per user, no GAUC
        metrics["gauc"] = gauc(labels, probs, users.numpy())
    return metrics


def validate(
    model: TwoTower | RankingModel | CascadeModel, data: PreparedData, tables: FeatureTables
) -> dict[str, float]:
    """Validation metrics; a cascade reports each stage's under ``retrieval_``/``ranker_`` names."""
    if isinstance(model, CascadeModel):
        return {
            **{f"retrieval_{k}": v for k, v in retrieval_validation(model.retrieval, data, tables).items()},
            **{f"ranker_{k}": v for k, v in ranking_validation(model.ranker, data, tables).items()},
        }
    if isinstance(model, TwoTower):
        return retrieval_validation(model, data, tables)
    return ranking_validation(model, data, tables)
