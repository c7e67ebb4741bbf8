"""LCRON: Learning Cascade Ranking as One Network.

Wang et al., "Learning Cascade Ranking as One Network", ICML 2025 (arXiv:2503.09492), Sec. 3.
A two-stage cascade keeps the top ``k1`` candidates by the retrieval score, then the top ``k2``
of those by the ranking score; the system succeeds when the ground-truth items ``T`` survive both
stages. With NeuralSort (see :mod:`soft_sort`) the probability that item ``j`` is in a stage's
top ``k`` is relaxed to the soft membership ``m_k(s)[j]``, and the survival probability of ``j``
is lower-bounded by the product over stages. LCRON's end-to-end loss is the negative log of that
bound over the ground truth::

    L_e2e    = -1/|T| * sum_{j in T} log( m_{k1}(s_retrieval)[j] * m_{k2}(s_ranking)[j] )

The bound is tight only if each stage also ranks the ground truth well on its own, and its
gradient vanishes for a stage when the other stage's membership is near 0, so every stage gets
an auxiliary "single" loss: its own relaxed Recall@|T| over the full candidate set::

    L_single^s = -1/|T| * sum_{j in T} log( m_{|T|}(s_s)[j] )

    L = e2e_weight * L_e2e + retrieval_aux_weight * L_single^ret + ranking_aux_weight * L_single^rank

With ``uncertainty_weighting=True`` each auxiliary term is instead balanced by a learnable
``sigma_s`` as ``aux_weight * L_single^s / (2 sigma_s^2) + log sigma_s`` (Kendall et al., 2018),
as the paper and its public code do; the module then owns two parameters the optimiser must
include. Logs are taken as ``log((x + eps) / (1 + eps))`` so a membership of exactly 1 costs 0.

Conventions: lists are rows of a padded ``[B, M]`` batch; ``T`` is the set of valid items with
label 1. A list without any ground-truth item contributes nothing and is excluded from the mean;
if no list has ground truth the loss is 0 (not NaN). When ``k`` is at least the number of valid
items, the membership is 1 (everything survives). Both stages score all ``M`` candidates, as in
the paper's training setup.
"""

import math
from typing import ClassVar

import torch
from torch import nn

from ._validation import require_binary, require_bool, require_float, require_positive, require_shape
from .soft_sort import neural_sort, soft_topk_membership


class LCRONLoss(nn.Module):
    """LCRON end-to-end cascade loss plus per-stage auxiliary losses.

    Args:
        retrieval_k: ``k1``, how many candidates the retrieval stage passes on.
        ranking_k: ``k2 <= k1``, how many items the ranking stage finally selects.
        temperature: NeuralSort temperature ``tau`` (smaller = closer to a hard sort).
        e2e_weight, retrieval_aux_weight, ranking_aux_weight: weights of the three terms.
        uncertainty_weighting: learn the auxiliary balance as in the paper (see module doc).
        eps: smoothing inside the logarithms.

    ``forward(retrieval_scores [B, M], ranking_scores [B, M], labels [B, M] in {0, 1},
    mask [B, M] bool | None) -> scalar``. ``forward_components`` returns the total and the
    detached terms; ``forward`` also stores them in :attr:`components` for logging.
    """

    kind: ClassVar[str] = "cascade"

    def __init__(
        self,
        retrieval_k: int,
        ranking_k: int,
        temperature: float = 1.0,
        e2e_weight: float = 1.0,
        retrieval_aux_weight: float = 1.0,
        ranking_aux_weight: float = 1.0,
        uncertainty_weighting: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, k in (("retrieval_k", retrieval_k), ("ranking_k", ranking_k)):
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"{name} must be an int >= 1, got {k!r}")
        if ranking_k > retrieval_k:
            raise ValueError(
                f"ranking_k ({ranking_k}) must not exceed retrieval_k ({retrieval_k}): "
                "the ranking stage selects from what retrieval passes on"
            )
        require_positive("temperature", temperature)
        for name, weight in (
            ("e2e_weight", e2e_weight),
            ("retrieval_aux_weight", retrieval_aux_weight),
            ("ranking_aux_weight", ranking_aux_weight),
        ):
            if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {weight!r}")
        if not isinstance(uncertainty_weighting, bool):
            raise ValueError(f"uncertainty_weighting must be a bool, got {uncertainty_weighting!r}")
        require_positive("eps", eps)
        self.retrieval_k = retrieval_k
        self.ranking_k = ranking_k
        self.temperature = float(temperature)
        self.e2e_weight = float(e2e_weight)
        self.retrieval_aux_weight = float(retrieval_aux_weight)
        self.ranking_aux_weight = float(ranking_aux_weight)
        self.uncertainty_weighting = uncertainty_weighting
        self.eps = float(eps)
        if uncertainty_weighting:
            # log(sigma_s), initialised at sigma = 1 like the authors' code.
            self.log_sigma_retrieval = nn.Parameter(torch.zeros(()))
            self.log_sigma_ranking = nn.Parameter(torch.zeros(()))
        self.components: dict[str, torch.Tensor] = {}

    def forward(
        self,
        retrieval_scores: torch.Tensor,
        ranking_scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = self.forward_components(retrieval_scores, ranking_scores, labels, mask)
        self.components = {name: value.detach() for name, value in parts.items()}
        return parts["loss"]

    def forward_components(
        self,
        retrieval_scores: torch.Tensor,
        ranking_scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "e2e", "retrieval_aux", "ranking_aux"}`` (terms detached)."""
        mask = self._validate(retrieval_scores, ranking_scores, labels, mask)
        truth = (labels == 1) & mask
        n_truth = truth.sum(dim=-1)  # |T| per list
        has_truth = n_truth > 0
        dtype = retrieval_scores.dtype

        perm_ret = neural_sort(retrieval_scores, mask, self.temperature)
        perm_rank = neural_sort(ranking_scores, mask, self.temperature)
        batch = retrieval_scores.shape[0]
        k1 = torch.full((batch,), self.retrieval_k, device=mask.device)
        k2 = torch.full((batch,), self.ranking_k, device=mask.device)
        survive = soft_topk_membership(perm_ret, k1, mask) * soft_topk_membership(perm_rank, k2, mask)
        recall_ret = soft_topk_membership(perm_ret, n_truth, mask)
        recall_rank = soft_topk_membership(perm_rank, n_truth, mask)

        def neg_log_over_truth(prob: torch.Tensor) -> torch.Tensor:
            nll = -torch.log((prob + self.eps) / (1.0 + self.eps))
            per_list = torch.where(truth, nll, 0.0).sum(dim=-1) / n_truth.clamp_min(1).to(dtype)
            return per_list.sum() / has_truth.sum().clamp_min(1).to(dtype)

        e2e = neg_log_over_truth(survive)
        aux_ret = neg_log_over_truth(recall_ret)
        aux_rank = neg_log_over_truth(recall_rank)

        if self.uncertainty_weighting:
            aux_total = self._uncertain(aux_ret, self.retrieval_aux_weight, self.log_sigma_retrieval)
            aux_total = aux_total + self._uncertain(aux_rank, self.ranking_aux_weight, self.log_sigma_ranking)
        else:
            aux_total = self.retrieval_aux_weight * aux_ret + self.ranking_aux_weight * aux_rank
        loss = self.e2e_weight * e2e + aux_total
        return {
            "loss": loss,
            "e2e": e2e.detach(),
            "retrieval_aux": aux_ret.detach(),
            "ranking_aux": aux_rank.detach(),
        }

    @staticmethod
    def _uncertain(term: torch.Tensor, weight: float, log_sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = log_sigma.to(term.dtype)
        return weight * 0.5 * torch.exp(-2.0 * log_sigma) * term + log_sigma

    @staticmethod
    def _validate(
        retrieval_scores: torch.Tensor,
        ranking_scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        sizes: dict[str, int] = {}
        require_float("retrieval_scores", retrieval_scores)
        require_shape("retrieval_scores", retrieval_scores, ["B", "M"], sizes)
        require_float("ranking_scores", ranking_scores)
        require_shape("ranking_scores", ranking_scores, ["B", "M"], sizes)
        if ranking_scores.dtype != retrieval_scores.dtype:
            raise ValueError(
                f"ranking_scores: expected dtype {retrieval_scores.dtype} like retrieval_scores, "
                f"got {ranking_scores.dtype}"
            )
        require_shape("labels", labels, ["B", "M"], sizes)
        if mask is None:
            mask = torch.ones_like(retrieval_scores, dtype=torch.bool)
        else:
            require_bool("mask", mask)
            require_shape("mask", mask, ["B", "M"], sizes)
        require_binary("labels", labels[mask])  # padding may hold anything
        return mask

    def extra_repr(self) -> str:
        return (
            f"retrieval_k={self.retrieval_k}, ranking_k={self.ranking_k}, temperature={self.temperature}, "
            f"e2e_weight={self.e2e_weight}, retrieval_aux_weight={self.retrieval_aux_weight}, "
            f"ranking_aux_weight={self.ranking_aux_weight}, "
            f"uncertainty_weighting={self.uncertainty_weighting}"
        )
