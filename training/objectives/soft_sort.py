"""Differentiable sorting (NeuralSort) and the soft top-k shares LCRON builds on it.

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


def top_k_shares(perm: torch.Tensor, k: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's share of its NeuralSort mass in the top ``k[b]`` rank rows and in the rest.

    ``inside_j = sum_{i < k} P[i, j] / (c_j + eps)`` and ``outside_j = sum_{i >= k} P[i, j] / (c_j + eps)``
    with the column total ``c_j = sum_i P[i, j]`` *detached*, exactly as the LCRON authors' code
    (``deep_components/loss/two_stage/lcron.py``) normalises: the normaliser turns NeuralSort's
    row-stochastic matrix into a per-item distribution over ranks in the forward pass, while the
    gradient reaches an item only through the rows its share is read from (top rows for
    ``inside``, bottom rows for ``outside``). Padded items (zero columns) get 0 for both.
    """
    rows = torch.arange(perm.shape[-2], device=perm.device)
    top = (rows.unsqueeze(0) < k.to(perm.device).unsqueeze(-1)).to(perm.dtype)  # [B, M] over rank rows
    total = perm.detach().sum(dim=-2) + eps
    inside = (perm * top.unsqueeze(-1)).sum(dim=-2) / total
    outside = (perm * (1.0 - top).unsqueeze(-1)).sum(dim=-2) / total
    return inside, outside
