"""Validation and test metrics of the unsharded model, in the model's own scoring function.

Runs on rank 0 with the plain model gathered for export, so the numbers are the numbers of exactly
what would be served. Two splits, two roles:

* ``"validation"``: events carved from the training part (``data.validation_fraction``); scored
  every epoch, it selects the best epoch and stops training early. Known items are the training
  events.
* ``"test"``: the held-out test events, scored once at the end with the selected weights. Known
  items are every event of the training part (training plus validation), as the papers mask the
  whole training file.

Retrieval scores are computed user chunk by user chunk (``retrieval_metrics`` with a callable),
so memory grows with users x dim, never users x items. The metric definitions live in
``rankforge.evaluation.metrics``; this module only builds their inputs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from rankforge.features.auctions import AuctionTensors
from rankforge.features.pipeline import PreparedData
from rankforge.models.cascade import CascadeModel
from rankforge.models.inputs import padded_to_kjt
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.training.auction_batches import auction_rows
from rankforge.training.batches import FeatureTables, context_tensor

KS = (10, 20)
Split = Literal["validation", "test"]
#: Users scored per chunk: 1024 x 41k items x 4 B = 170 MB of scores at Gowalla size.
CHUNK = 1024


def _column(frame: pl.DataFrame, name: str) -> torch.Tensor:
    return torch.from_numpy(frame[name].to_numpy().copy())


def _split_events(data: PreparedData, split: Split) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(held-out positives, events whose items are known and never recommended)."""
    if split == "validation":
        return data.validation_positives(), data.train_events
    return data.test_positives(), data.known_events()


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=shape)


@torch.no_grad()
def item_vectors(model: RetrievalModel, tables: FeatureTables, chunk: int = 8192) -> torch.Tensor:
    """Every item's scoring-space vector ``[n_items, d]``."""
    out = []
    for start in range(0, tables.n_items, chunk):
        idx = torch.arange(start, min(start + chunk, tables.n_items))
        out.append(model.candidate(padded_to_kjt(tables.items(idx), model.item_keys)))
    return torch.cat(out)


@torch.no_grad()
def query_vectors(model: RetrievalModel, tables: FeatureTables, users: torch.Tensor) -> torch.Tensor:
    """Scoring-space vectors ``[len(users), d]`` of users with their latest (served) history."""
    out = [
        model.query(padded_to_kjt(tables.users(users[s : s + CHUNK]), model.user_keys))
        for s in range(0, len(users), CHUNK)
    ]
    return torch.cat(out) if out else torch.empty(0, 0)


#: An index's search: ``(queries [n, d] float32, k) -> (item rows [n, k], scores [n, k])``.
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _exact(queries: torch.Tensor, items: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Score rows ``[n, n_items]`` of every item (exact search)."""
    return lambda rows: queries[rows] @ items.T


def _searched(
    search: Search, queries: torch.Tensor, items: torch.Tensor, known_counts: torch.Tensor, k: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Score rows ``[n, n_items]`` holding the exact scores of the items ``search`` retrieves for
    each user and -inf elsewhere. Each chunk asks for ``k`` plus its users' largest number of
    known items, so at least ``k`` retrieved items remain once those are excluded."""
    n_items = items.shape[0]

    def scores(rows: torch.Tensor) -> torch.Tensor:
        q = queries[rows]
        wanted = min(n_items, k + int(known_counts[rows].max()))
        found, _ = search(np.ascontiguousarray(q.numpy(), dtype=np.float32), wanted)
        ids = torch.from_numpy(np.asarray(found, dtype=np.int64))
        block = torch.full((len(rows), n_items), float("-inf"), dtype=q.dtype)
        block.scatter_(1, ids, (q.unsqueeze(1) * items[ids]).sum(-1))
        return block

    return scores


def _held_out(
    data: PreparedData, split: Split, n_items: int
) -> tuple[torch.Tensor, sp.csr_matrix, sp.csr_matrix] | None:
    """(the held-out users ``[n]``, their relevant items and their known items, both bool
    ``[n, n_items]``), or None when the split holds no positive."""
    held_out, known = _split_events(data, split)
    users = torch.unique(_column(held_out, "user_idx"))
    if users.numel() == 0:
        return None
    shape = (len(users), n_items)
    rows = torch.searchsorted(users, _column(held_out, "user_idx")).numpy()
    relevant = _csr(rows, held_out["item_idx"].to_numpy(), shape)
    known_users = _column(known, "user_idx")
    keep = torch.isin(known_users, users)
    exclude = _csr(
        torch.searchsorted(users, known_users[keep]).numpy(),
        known["item_idx"].to_numpy()[keep.numpy()],
        shape,
    )
    return users, relevant, exclude


@torch.no_grad()
def retrieval_validation(
    model: RetrievalModel,
    data: PreparedData,
    tables: FeatureTables,
    split: Split = "test",
    ks: tuple[int, ...] = KS,
    search: Search | None = None,
) -> dict[str, float]:
    """Recall/NDCG/HitRate/MRR@k of every held-out user's positives against all items, scored
    with the model's scoring function; the user's known items are excluded, as when serving.

    With ``search`` (an index's ``search(queries [n, d], k) -> (item rows [n, k], scores)``) only
    the items the index retrieves are ranked, as a served request ranks them: enough are asked
    for that the top ``max(ks)`` survive the exclusion of the user's known items."""
    from rankforge.evaluation.metrics import retrieval_metrics

    was_training = model.training
    model.eval()  # e.g. SimpleX's dropout
    try:
        found = _held_out(data, split, tables.n_items)
        if found is None:
            return {}
        users, relevant, exclude = found
        queries = query_vectors(model, tables, users)
        items = item_vectors(model, tables)
        scores = (
            _exact(queries, items)
            if search is None
            else _searched(search, queries, items, torch.from_numpy(np.diff(exclude.indptr)), max(ks))
        )
        metrics = retrieval_metrics(scores, relevant, exclude, ks=ks, batch_size=CHUNK)
        return {k: float(v) for k, v in metrics.items()}
    finally:
        model.train(was_training)


#: A cascade's funnel as validated: the retrieval stage's top ``CASCADE_K1`` unseen items, re-ranked
#: by the ranker; ``end_to_end_recall@10`` is the share of held-out positives in the ranker's top 10.
CASCADE_K1 = 100
CASCADE_KS = (10,)


@torch.no_grad()
def cascade_validation(
    model: CascadeModel, data: PreparedData, tables: FeatureTables, split: Split = "test"
) -> dict[str, float]:
    """``end_to_end_{metric}@k``: both stages as served, the retrieval stage's top ``CASCADE_K1``
    unseen items (exact search) re-ranked by the ranker, its top ``k`` against the held-out
    positives (every other item scores -inf)."""
    from rankforge.evaluation.metrics import retrieval_metrics

    was_training = model.training
    model.eval()
    try:
        found = _held_out(data, split, tables.n_items)
        if found is None:
            return {}
        users, relevant, exclude = found
        queries = query_vectors(model.retrieval, tables, users)
        items = item_vectors(model.retrieval, tables)
        k1 = min(CASCADE_K1, tables.n_items)
        keys = tables.user_keys + tables.item_keys

        def scores(rows: torch.Tensor) -> torch.Tensor:
            first = (queries[rows] @ items.T).masked_fill(
                torch.from_numpy(exclude[rows.numpy()].toarray()), float("-inf")
            )
            top = torch.topk(first, k1, dim=1).indices  # [n, k1]
            pair_users, pair_items = users[rows].repeat_interleave(k1), top.reshape(-1)
            sparse = padded_to_kjt({**tables.users(pair_users), **tables.items(pair_items)}, keys)
            logits = model.ranker(tables.dense(pair_users, pair_items), sparse).reshape(len(rows), k1)
            return torch.full_like(first, float("-inf")).scatter_(1, top, logits.to(first.dtype))

        metrics = retrieval_metrics(scores, relevant, exclude, ks=CASCADE_KS, batch_size=CHUNK)
        return {f"end_to_end_{k}": float(v) for k, v in metrics.items()}
    finally:
        model.train(was_training)


@torch.no_grad()
def ranking_validation(
    model: RankingModel, data: PreparedData, tables: FeatureTables, split: Split = "test"
) -> dict[str, float]:
    """AUC, LogLoss, ECE (and GAUC when users have both labels) on the labelled held-out events,
    with features joined as at serving time."""
    from rankforge.evaluation.metrics import gauc, ranking_metrics, sigmoid

    if split == "validation":
        if data.validation_events is None:
            return {}
        test = data.validation_events
    else:
        test = data.test_events
    users, items = _column(test, "user_idx"), _column(test, "item_idx")
    labels = _column(test, "label").numpy()
    if labels.min() == labels.max():
        warnings.warn("held-out events have a single label: no ranking metrics", stacklevel=2)
        return {}
    sparse = padded_to_kjt(
        {**tables.users(users), **tables.items(items)}, tables.user_keys + tables.item_keys
    )
    context = context_tensor(test, tables.layout) if tables.layout.context else None
    probs = sigmoid(model(tables.dense(users, items, context), sparse).numpy())
    metrics = ranking_metrics(labels, probs)
    with contextlib.suppress(ValueError):  # e.g. leave-one-out: one test event per user, no GAUC
        metrics["gauc"] = gauc(labels, probs, users.numpy())
    return metrics


@torch.no_grad()
def auction_pctr(
    model: RankingModel, auctions: AuctionTensors, tables: FeatureTables, chunk: int = 2048
) -> np.ndarray:
    """The model's pCTR of every ``[A, M]`` slot (padding slots hold some ad's score: mask them)."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, auctions.n_auctions, chunk):
            part = auctions.take(torch.arange(start, min(start + chunk, auctions.n_auctions)))
            dense, sparse, *_ = auction_rows(part, tables)
            out.append(torch.sigmoid(model(dense, sparse)).reshape(part.ads.shape).double().numpy())
        return np.concatenate(out)
    finally:
        model.train(was_training)


def auction_validation(
    model: RankingModel, data: PreparedData, tables: FeatureTables, split: Split
) -> dict[str, float]:
    """Welfare, revenue, AUC and LogLoss of the auctions of ``split`` run on the model's pCTRs."""
    from rankforge.evaluation.auction_metrics import auction_metrics

    assert data.auctions is not None
    auctions = data.auctions.split(split)
    if auctions is None:
        return {}
    return auction_metrics(auction_pctr(model, auctions, tables), **auctions.outcome_inputs())


def validate(
    model: RetrievalModel | RankingModel | CascadeModel,
    data: PreparedData,
    tables: FeatureTables,
    split: Split = "test",
) -> dict[str, float]:
    """Metrics on ``split``; a cascade reports each stage's under ``retrieval_``/``ranker_`` names
    and the funnel's under ``end_to_end_`` (:func:`cascade_validation`);
    an auction model (data with auctions) its auctions' welfare."""
    if data.auctions is not None and isinstance(model, RankingModel):
        return auction_validation(model, data, tables, split)
    if isinstance(model, CascadeModel):
        return {
            **{
                f"retrieval_{k}": v
                for k, v in retrieval_validation(model.retrieval, data, tables, split).items()
            },
            **{f"ranker_{k}": v for k, v in ranking_validation(model.ranker, data, tables, split).items()},
            **cascade_validation(model, data, tables, split),
        }
    if isinstance(model, RetrievalModel):
        return retrieval_validation(model, data, tables, split)
    return ranking_validation(model, data, tables, split)
