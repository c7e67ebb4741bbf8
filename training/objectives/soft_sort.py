"""Differentiable sorting (NeuralSort) and the soft top-k membership built on it.

NeuralSort: Grover, Wang, Zweig, Ermon, "Stochastic Optimization of Sorting Networks via
Continuous Relaxations", ICLR 2019, Sec. 3 (Theorem 1 and its softmax relaxation). For scores
``s`` of ``n`` items, row ``i`` (rank ``i``, 1-based, descending) of the relaxed permutation
matrix is::

    P[i, :] = softmax(((n + 1 - 2i) * s - A_s 1) / tau),   A_s[j, l] = |s_j - s_l|

which tends to the hard sorting permutation as ``tau -> 0``. LCRON uses it to relax "item ``j``
is in the top ``k``" into ``sum_{i <= k} P[i, j]``.

Both functions work on padded batches ``[B, M]`` with a validity mask: padded items are neither
sorted nor counted in ``n``, so a padded list gives exactly the result of the unpadded one.
Cost is ``O(B * M^2)`` time and memory.
"""

import torch


def neural_sort(scores: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed descending-sort permutation matrices ``P [B, M, M]`` (rank ``i`` x item ``j``).

    Rows ``i >= n_b`` (ranks beyond the number of valid items) and columns of padded items are 0.
    """
    valid = mask.to(scores.dtype)
    s = torch.where(mask, scores, 0.0)  # padding values never reach the arithmetic
    n = valid.sum(dim=-1, keepdim=True)  # [B, 1]
    # (A_s 1)_j restricted to valid l: sum_l |s_j - s_l|.
    abs_sum = ((s.unsqueeze(-1) - s.unsqueeze(-2)).abs() * valid.unsqueeze(-2)).sum(dim=-1)  # [B, M]
    ranks = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
    scaling = n + 1.0 - 2.0 * ranks  # [B, M] over rank rows i
    logits = (scaling.unsqueeze(-1) * s.unsqueeze(-2) - abs_sum.unsqueeze(-2)) / temperature
    logits = logits.masked_fill(~mask.unsqueeze(-2), float("-inf"))
    empty = ~mask.any(dim=-1)  # lists without any valid item: avoid softmax over only -inf
    logits = logits.masked_fill(empty[:, None, None], 0.0)
    perm = torch.softmax(logits, dim=-1)
    row_valid = ranks.unsqueeze(0) <= n  # [B, M]
    return perm * (row_valid.unsqueeze(-1) & mask.unsqueeze(-2)).to(perm.dtype)


def soft_topk_membership(perm: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft probability ``[B, M]`` that each item is among the top ``k[b]`` of its list.

    ``m_k[j] = sum_{i <= k} P[i, j] / sum_{i <= n} P[i, j]``: the column normalisation (as in the
    LCRON authors' code) turns NeuralSort's row-stochastic matrix into a per-item distribution
    over ranks, so ``m_k`` lies in ``[0, 1]`` and equals 1 when ``k >= n``. Padded items get 0.
    """
    n = mask.sum(dim=-1)
    k_eff = torch.minimum(k.to(n.dtype), n)
    rows = torch.arange(perm.shape[-2], device=perm.device)
    top = (rows.unsqueeze(0) < k_eff.unsqueeze(-1)).to(perm.dtype)  # [B, M] over rank rows
    in_top = (perm * top.unsqueeze(-1)).sum(dim=-2)
    total = perm.sum(dim=-2)  # invalid rows are already 0
    safe_total = torch.where(mask, total, 1.0)
    return torch.where(mask, in_top / safe_total, 0.0)
