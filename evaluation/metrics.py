"""Offline metrics for retrieval (top-K over the full item set) and ranking (CTR quality).

Retrieval metrics score *every* item for each user, mask the user's training items, and compare
the top K with the held-out items: sampled-candidate metrics overstate quality and disagree with
what the served exact top-K would return. Users are processed in chunks so the score matrix never
has to exist whole.

Conventions (those of LightGCN / most recsys papers):
* Recall@K = |top-K ∩ relevant| / |relevant|
* NDCG@K   = DCG@K / IDCG@K with binary gains, DCG = Σ_{r ≤ K} hit_r / log2(r + 1) and the ideal
  DCG over min(K, |relevant|) hits
* HitRate@K = 1 if any relevant item is in the top K
* MRR@K    = 1 / rank of the first relevant item in the top K (0 if none)
Each is averaged over users with at least one relevant item; users without one are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch
from scipy.stats import rankdata

Scores = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
RETRIEVAL_METRICS = ("recall", "ndcg", "hitrate", "mrr")


def _rows(matrix: torch.Tensor | None, users: torch.Tensor) -> torch.Tensor | None:
    return None if matrix is None else matrix[users]


def per_user_retrieval_metrics(
    scores: Scores,
    relevant: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Each metric per evaluated user (users with a relevant item, in index order).

    The per-user values are what a paired bootstrap resamples; :func:`retrieval_metrics` averages them.
    Also returns ``"user"``: the evaluated users' row indices.
    """
    if relevant.dim() != 2 or relevant.dtype != torch.bool:
        raise ValueError(
            f"relevant must be a bool [users, items] tensor, got {relevant.dtype} {tuple(relevant.shape)}"
        )
    n_items = relevant.shape[1]
    if exclude is not None and (exclude.shape != relevant.shape or exclude.dtype != torch.bool):
        raise ValueError(f"exclude must be a bool tensor shaped like relevant {tuple(relevant.shape)}")
    if isinstance(scores, torch.Tensor) and scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} differ in shape")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cutoffs, got {ks}")
    k_max = min(max(ks), n_items)
    evaluated = torch.nonzero(relevant.any(dim=1)).flatten()
    if evaluated.numel() == 0:
        raise ValueError("no user has a relevant (held-out) item: nothing to evaluate")
    discounts = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    out: dict[str, list[torch.Tensor]] = {f"{m}@{k}": [] for k in ks for m in RETRIEVAL_METRICS}
    for start in range(0, evaluated.numel(), batch_size):
        users = evaluated[start : start + batch_size]
        block = scores(users) if callable(scores) else scores[users]
        if block.shape != (users.numel(), n_items):
            expected = [users.numel(), n_items]
            raise ValueError(f"scores for a chunk of users must be {expected}, got {list(block.shape)}")
        block = block.double()
        mask = _rows(exclude, users)
        if mask is not None:
            block = block.masked_fill(mask, float("-inf"))
        top = torch.topk(block, k_max, dim=1).indices
        rel = relevant[users]
        hits = rel.gather(1, top).double()
        n_rel = rel.sum(dim=1).double()
        first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1).double() + 1, torch.inf)
        for k in ks:
            kk = min(k, k_max)
            h = hits[:, :kk]
            ideal = torch.cumsum(discounts, 0)[(n_rel.clamp(max=kk) - 1).long()]
            out[f"recall@{k}"].append(h.sum(1) / n_rel)
            out[f"ndcg@{k}"].append((h * discounts[:kk]).sum(1) / ideal)
            out[f"hitrate@{k}"].append((h.sum(1) > 0).double())
            out[f"mrr@{k}"].append(torch.where(first_hit <= kk, 1.0 / first_hit, 0.0))
    result = {name: torch.cat(parts).numpy() for name, parts in out.items()}
    result["user"] = evaluated.numpy()
    return result


def retrieval_metrics(
    scores: Scores,
    relevant: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall/NDCG/HitRate/MRR at each K, averaged over users with a held-out item.

    ``scores``: [users, items] tensor, or a callable from user row indices to their score rows.
    ``relevant``: bool [users, items], the held-out positives. ``exclude``: bool [users, items],
    items never to recommend (the user's training items); they are scored -inf.
    """
    per_user = per_user_retrieval_metrics(scores, relevant, exclude, ks, batch_size)
    return {name: float(values.mean()) for name, values in per_user.items() if name != "user"}


def pairs_to_mask(
    users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A bool [users, items] mask from index pairs (held-out events, training events)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    u, i = (
        torch.as_tensor(np.asarray(users), dtype=torch.long),
        torch.as_tensor(np.asarray(items), dtype=torch.long),
    )
    if u.numel() and (u.max() >= shape[0] or i.max() >= shape[1] or u.min() < 0 or i.min() < 0):
        raise ValueError(f"index pairs fall outside {shape}")
    mask[u, i] = True
    return mask


def _binary(
    labels: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if y.size == 0:
        raise ValueError("no examples")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def auc(labels: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]) -> float:
    """ROC AUC from average ranks (Mann–Whitney U): ties count one half, as in sklearn."""
    y, s = _binary(labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(
    labels: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[int],
) -> float:
    """Group AUC: per-user AUC weighted by the user's number of impressions.

    Users whose impressions are all positive or all negative have no AUC and are left out (of
    the weights too), as in the DIN paper's definition.
    """
    y, s = _binary(labels, scores)
    g = np.asarray(groups).ravel()
    if g.shape != y.shape:
        raise ValueError(f"groups {g.shape} and labels {y.shape} differ in length")
    per_group = (
        pl.DataFrame({"g": g, "s": s, "y": y})
        .with_columns(pl.col("s").rank("average").over("g").alias("r"))
        .group_by("g")
        .agg(
            pl.len().alias("n"),
            pl.col("y").sum().alias("pos"),
            (pl.col("r") * pl.col("y")).sum().alias("rank_sum"),
        )
        .with_columns((pl.col("n") - pl.col("pos")).alias("neg"))
        .filter((pl.col("pos") > 0) & (pl.col("neg") > 0))
        .with_columns(
            (
                (pl.col("rank_sum") - pl.col("pos") * (pl.col("pos") + 1) / 2)
                / (pl.col("pos") * pl.col("neg"))
            ).alias("auc")
        )
    )
    if per_group.height == 0:
        raise ValueError("GAUC needs at least one group with both positive and negative labels")
    return float((per_group["auc"] * per_group["n"]).sum() / per_group["n"].sum())


def logloss(
    labels: np.ndarray | Sequence[float], probs: np.ndarray | Sequence[float], eps: float = 1e-7
) -> float:
    """Mean binary cross-entropy of probabilities, clipped to [eps, 1 - eps]."""
    y, p = _binary(labels, probs)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1] (pass sigmoid(logits))")
    p = np.clip(p, eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def expected_calibration_error(
    labels: np.ndarray | Sequence[float], probs: np.ndarray | Sequence[float], n_bins: int = 15
) -> float:
    """Σ_b (n_b / n) · |mean label_b − mean prob_b| over equal-width probability bins."""
    y, p = _binary(labels, probs)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins)
    )
    return float(gap.sum() / count.sum())


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def ranking_metrics(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[int] | None = None,
) -> dict[str, float]:
    """AUC, LogLoss, ECE and (with ``groups``) GAUC of CTR predictions."""
    out = {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "ece": expected_calibration_error(labels, probs),
    }
    if groups is not None:
        out["gauc"] = gauc(labels, probs, groups)
    return out
