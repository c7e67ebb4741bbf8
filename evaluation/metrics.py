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
Excluded items are scored -inf and can never count as hits, even when fewer than K items remain.
Ties between scores are broken by ``torch.topk`` (arbitrarily); float scores rarely tie exactly.

Ranking (CTR) metrics work on labels and probabilities (or logits, with ``logits=True``). AUC is
the Mann–Whitney statistic from average ranks, so tied scores count one half exactly as in
sklearn's ``roc_auc_score``; GAUC reuses the same rank computation within each group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit

Scores: TypeAlias = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
# A bool [users, items] mask: dense torch tensor, or any scipy.sparse matrix/array (rows densified
# one chunk at a time, so 100k users x 10k items never needs a dense mask).
Mask: TypeAlias = torch.Tensor | sp.sparray | sp.spmatrix
RETRIEVAL_METRICS = ("recall", "ndcg", "hitrate", "mrr")


class _MaskRows:
    """Row access to a dense or sparse bool mask, returning dense bool tensors.

    Sparse rows are expanded with torch ops from the CSR arrays rather than scipy's row indexing:
    a fresh numpy buffer per chunk makes glibc raise its mmap threshold and the heap fragment
    (gigabytes of RSS over 100k users), while torch-allocated chunks are reused.
    """

    def __init__(self, mask: Mask, name: str, shape: tuple[int, int] | None = None) -> None:
        self._dense: torch.Tensor | None = None
        if sp.issparse(mask):
            csr = sp.csr_array(mask, dtype=bool)
            csr.sum_duplicates()
            csr.eliminate_zeros()
            self._indptr = torch.from_numpy(csr.indptr.astype(np.int64))
            self._indices = torch.from_numpy(csr.indices.astype(np.int64))
            self.shape = (int(csr.shape[0]), int(csr.shape[1]))
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.dtype == torch.bool:
            self._dense = mask
            self.shape = (int(mask.shape[0]), int(mask.shape[1]))
        else:
            is_tensor = isinstance(mask, torch.Tensor)
            got = f"{mask.dtype} {tuple(mask.shape)}" if is_tensor else type(mask).__name__
            raise ValueError(f"{name} must be a bool [users, items] tensor or scipy.sparse matrix, got {got}")
        if shape is not None and self.shape != shape:
            raise ValueError(f"{name} {self.shape} must be shaped like relevant {shape}")

    def nonempty_rows(self) -> torch.Tensor:
        if self._dense is not None:
            return torch.nonzero(self._dense.any(dim=1)).flatten()
        return torch.nonzero(torch.diff(self._indptr) > 0).flatten()

    def __getitem__(self, users: torch.Tensor) -> torch.Tensor:
        if self._dense is not None:
            return self._dense[users]
        starts = self._indptr[users]
        lengths = self._indptr[users + 1] - starts
        row = torch.repeat_interleave(torch.arange(users.numel()), lengths)
        # entry j of the gathered rows sits at indices[start of its row + (j − first j of its row)]
        first = torch.cumsum(lengths, 0) - lengths
        position = torch.repeat_interleave(starts - first, lengths) + torch.arange(row.numel())
        out = torch.zeros((users.numel(), self.shape[1]), dtype=torch.bool)
        out[row, self._indices[position]] = True
        return out


def per_user_retrieval_metrics(
    scores: Scores,
    relevant: Mask,
    exclude: Mask | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Each metric per evaluated user (users with a relevant item, in index order).

    The per-user values are what a paired bootstrap resamples; :func:`retrieval_metrics` averages them.
    Also returns ``"user"``: the evaluated users' row indices. Arguments as in :func:`retrieval_metrics`.
    """
    rel_rows = _MaskRows(relevant, "relevant")
    n_users, n_items = rel_rows.shape
    exc_rows = None if exclude is None else _MaskRows(exclude, "exclude", rel_rows.shape)
    if isinstance(scores, torch.Tensor) and tuple(scores.shape) != (n_users, n_items):
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {(n_users, n_items)} differ in shape")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cutoffs, got {ks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k_max = min(max(ks), n_items)
    evaluated = rel_rows.nonempty_rows()
    if evaluated.numel() == 0:
        raise ValueError("no user has a relevant (held-out) item: nothing to evaluate")
    discounts = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    ideal_dcg = torch.cumsum(discounts, 0)  # ideal_dcg[m - 1]: DCG of m hits in the first m slots
    out: dict[str, list[torch.Tensor]] = {f"{m}@{k}": [] for k in ks for m in RETRIEVAL_METRICS}
    for start in range(0, evaluated.numel(), batch_size):
        users = evaluated[start : start + batch_size]
        block = scores(users) if callable(scores) else scores[users]
        if tuple(block.shape) != (users.numel(), n_items):
            expected = [users.numel(), n_items]
            raise ValueError(f"scores for a chunk of users must be {expected}, got {list(block.shape)}")
        if not block.is_floating_point():
            block = block.double()
        if torch.isnan(block).any():
            raise ValueError("scores contain NaN")
        rel = rel_rows[users]
        n_rel = rel.sum(dim=1).double()
        if exc_rows is not None:
            mask = exc_rows[users]
            block = block.masked_fill(mask, float("-inf"))
            rel = rel & ~mask  # an excluded item is never a hit, even if top-k has to reach it
        top = torch.topk(block, k_max, dim=1).indices
        hits = rel.gather(1, top).double()
        first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1).double() + 1, torch.inf)
        for k in ks:
            kk = min(k, k_max)
            h = hits[:, :kk]
            ideal = ideal_dcg[(n_rel.clamp(max=kk) - 1).long()]
            out[f"recall@{k}"].append(h.sum(1) / n_rel)
            out[f"ndcg@{k}"].append((h * discounts[:kk]).sum(1) / ideal)
            out[f"hitrate@{k}"].append((h.sum(1) > 0).double())
            out[f"mrr@{k}"].append(torch.where(first_hit <= kk, 1.0 / first_hit, 0.0))
    result = {name: torch.cat(parts).numpy() for name, parts in out.items()}
    result["user"] = evaluated.numpy()
    return result


def retrieval_metrics(
    scores: Scores,
    relevant: Mask,
    exclude: Mask | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """``recall@K``, ``ndcg@K``, ``hitrate@K`` and ``mrr@K`` for each K, over the full item set.

    ``scores``: float [users, items] tensor, or a callable from a long tensor of user row indices
    to their [len, items] score rows (called with at most ``batch_size`` users at a time, so the
    full score matrix never exists). ``relevant``: bool [users, items], the held-out positives.
    ``exclude``: bool [users, items], items never to recommend (the user's training items); they
    are scored -inf before the top K. Both masks may be scipy.sparse (see :func:`csr_to_dense_mask`
    and :func:`lists_to_mask` for building dense ones).

    Recall@K = hits / |relevant| (LightGCN convention, so a user with more than K held-out items
    cannot reach 1); NDCG@K uses binary gains and the ideal DCG of min(K, |relevant|) hits.
    Averaged over users with at least one relevant item; users with none are skipped, and a
    ValueError is raised when no user has one.
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


def csr_to_dense_mask(
    indptr: np.ndarray | Sequence[int], indices: np.ndarray | Sequence[int], n_items: int
) -> torch.Tensor:
    """A bool [users, n_items] mask from CSR rows: row u holds ``indices[indptr[u]:indptr[u + 1]]``."""
    ptr = np.asarray(indptr, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64)
    if ptr.ndim != 1 or ptr.size == 0 or ptr[0] != 0 or ptr[-1] != idx.size or (np.diff(ptr) < 0).any():
        raise ValueError("indptr must start at 0, never decrease and end at len(indices)")
    rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    return pairs_to_mask(rows, idx, (ptr.size - 1, n_items))


def lists_to_mask(item_lists: Sequence[Sequence[int]], n_items: int) -> torch.Tensor:
    """A bool [len(item_lists), n_items] mask from one list of item indices per user."""
    lengths = np.fromiter((len(items) for items in item_lists), dtype=np.int64, count=len(item_lists))
    parts = [np.asarray(items, dtype=np.int64) for items in item_lists]
    flat = np.concatenate(parts) if lengths.sum() else np.zeros(0, dtype=np.int64)
    return csr_to_dense_mask(np.r_[0, np.cumsum(lengths)], flat, n_items)


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


def _mann_whitney_auc(y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """AUC of each group from average ranks; NaN for a group with a single class.

    AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋) with R₊ the sum of the positives' ranks within the group
    and tied scores sharing their average rank, which counts each tied (pos, neg) pair as 1/2.
    Ranks come from one lexsort by (group, score): a rank is the position inside the group, and a
    run of equal scores takes the mean of its first and last position.
    """
    order = np.lexsort((s, codes))
    c, ss, yy = codes[order], s[order], y[order]
    pos = np.arange(c.size)
    new_group = np.r_[True, c[1:] != c[:-1]]
    new_tie = new_group | np.r_[True, ss[1:] != ss[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    tie_start = pos[new_tie]
    tie_mid = (tie_start + np.r_[tie_start[1:], c.size] - 1) / 2
    rank = tie_mid[np.cumsum(new_tie) - 1] - group_start + 1
    size = np.bincount(c, minlength=n_groups)
    n_pos = np.bincount(c, weights=yy, minlength=n_groups)
    n_neg = size - n_pos
    rank_sum = np.bincount(c, weights=rank * yy, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            (n_pos > 0) & (n_neg > 0), (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan
        )


def auc(labels: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]) -> float:
    """ROC AUC from average ranks (Mann–Whitney U): ties count one half, as in sklearn.

    Scores may be probabilities or logits (AUC only depends on their order).
    """
    y, s = _binary(labels, scores)
    value = _mann_whitney_auc(y, s, np.zeros(y.size, dtype=np.int64), 1)[0]
    if np.isnan(value):
        raise ValueError("AUC needs both positive and negative labels")
    return float(value)


def gauc(
    labels: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[int],
) -> float:
    """Group AUC: Σ_u n_u AUC_u / Σ_u n_u, per-user AUC weighted by the user's impressions n_u.

    A global AUC mixes users whose base rates differ; serving only ever ranks items *within* one
    user's request, which GAUC measures. Users whose impressions are all positive or all negative
    have no AUC and are left out (of the weights too), as in the DIN paper's definition; a
    ValueError is raised when no user has both labels.
    """
    y, s = _binary(labels, scores)
    g = np.asarray(groups).ravel()
    if g.shape != y.shape:
        raise ValueError(f"groups {g.shape} and labels {y.shape} differ in length")
    keys, codes = np.unique(g, return_inverse=True)
    per_group = _mann_whitney_auc(y, s, codes.ravel(), keys.size)
    valid = ~np.isnan(per_group)
    if not valid.any():
        raise ValueError("GAUC needs at least one group with both positive and negative labels")
    weights = np.bincount(codes.ravel(), minlength=keys.size)[valid]
    return float((per_group[valid] * weights).sum() / weights.sum())


def _probabilities(p: np.ndarray, logits: bool) -> np.ndarray:
    if logits:
        return expit(p)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1] (pass logits=True for logits)")
    return p


def logloss(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    eps: float = 1e-7,
    *,
    logits: bool = False,
) -> float:
    """Mean binary cross-entropy −[y log p + (1 − y) log(1 − p)], p clipped to [eps, 1 − eps].

    Clipping keeps one confidently wrong prediction from making the mean infinite. With
    ``logits=True`` the inputs are logits z, clipped to [logit(eps), logit(1 − eps)] (the same
    clip) and the loss is computed stably as log(1 + e^z) − y z.
    """
    y, p = _binary(labels, probs)
    if not 0 < eps < 0.5:
        raise ValueError("eps must be in (0, 0.5)")
    if logits:
        bound = np.log((1 - eps) / eps)
        z = np.clip(p, -bound, bound)
        return float((np.logaddexp(0.0, z) - y * z).mean())
    p = np.clip(_probabilities(p, logits=False), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def calibration_bins(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    n_bins: int = 15,
    *,
    logits: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, observed positive rate, count) per equal-width bin of [0, 1].

    Bin b holds b/n_bins <= p < (b+1)/n_bins (p = 1 in the last bin); empty bins have NaN means.
    The reliability diagram and the ECE are both read off these bins.
    """
    y, p = _binary(labels, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p = _probabilities(p, logits)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_p = np.bincount(bins, weights=p, minlength=n_bins) / count
        mean_y = np.bincount(bins, weights=y, minlength=n_bins) / count
    return mean_p, mean_y, count


def expected_calibration_error(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    n_bins: int = 15,
    *,
    logits: bool = False,
) -> float:
    """ECE = Σ_b (n_b / n) · |mean label_b − mean prob_b| over ``n_bins`` equal-width bins of [0, 1].

    Count-weighted, so sparsely populated bins barely move it (see :func:`calibration_bins`).
    """
    mean_p, mean_y, count = calibration_bins(labels, probs, n_bins, logits=logits)
    seen = count > 0
    return float((count[seen] * np.abs(mean_y[seen] - mean_p[seen])).sum() / count.sum())


def sigmoid(logits: np.ndarray | Sequence[float]) -> np.ndarray:
    """1 / (1 + e^−z) without overflow warnings for large |z|."""
    return expit(np.asarray(logits, dtype=np.float64))


def ranking_metrics(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[int] | None = None,
    *,
    logits: bool = False,
    n_bins: int = 15,
) -> dict[str, float]:
    """``auc``, ``logloss``, ``ece`` and (with ``groups``, e.g. user ids) ``gauc`` of CTR predictions.

    ``probs`` are probabilities, or logits with ``logits=True``.
    """
    out = {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs, logits=logits),
        "ece": expected_calibration_error(labels, probs, n_bins, logits=logits),
    }
    if groups is not None:
        out["gauc"] = gauc(labels, probs, groups)
    return out
