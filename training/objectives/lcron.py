"""LCRON: Learning Cascade Ranking as One Network.

Wang et al., "Learning Cascade Ranking as One Network", ICML 2025 (arXiv:2503.09492), Sec. 3, as
the authors' code writes it (github.com/kwai/LCRON, ``deep_components/loss/two_stage/lcron.py``
and ``sorting.py``). A two-stage cascade keeps the top ``k1`` candidates of a list by the
retrieval score, then the top ``k2`` by the ranking score; it succeeds when the ground-truth
items ``T`` survive both. NeuralSort (:mod:`soft_sort`, temperature ``tau``) relaxes each stage's
sort into ``P [rank x item]``; with the detached column total ``c_j = sum_i P_ij`` an item's
chance to be in a stage's top ``k`` is ``in_k(j) = sum_{i<k} P_ij / (c_j + eps)`` and its
complement is read from the bottom rows, ``out_k(j) = sum_{i>=k} P_ij / (c_j + eps)``.

Per list of ``n`` valid items (``g = |T|``, ``k1 = k2 = g`` by default)::

    L_joint  = 1/n [ sum_{j in T}     -log( in_k1^ret(j) * in_k2^rank(j) + eps )
                   + sum_{j not in T} -log( 1 - (1 - out_k1^ret(j)) (1 - out_k2^rank(j)) + eps ) ]

    L_single^s = 1[n > g] / n [ sum_{j in T} -log( in_g^s(j) + eps )
                              + sum_{j not in T} -log( out_g^s(j) + eps ) ]

each averaged over the lists of the batch. The ground-truth part pulls the truth through both
stages; the other part pushes every other item out of at least one stage (in the forward pass
``1 - out = in``, but the gradient flows through the bottom rows). The single-stage terms are each
stage's own relaxed Recall@g. They are combined by the learned uncertainty weighting of the
authors' ``LcronLossModel`` (Kendall et al., 2018), with ``w`` parameters starting at 1::

    L = L_joint + 0.5 / w_rank^2 * L_single^rank + 0.5 / w_ret^2 * L_single^ret + log(w_rank * w_ret)

Defaults are the authors' (their ``run_x2.sh``): ``temperature = 50``, both stages' ``k`` = the
number of ground-truth items of each list, uncertainty weighting on. Deliberate options, off by
default: ``retrieval_k``/``ranking_k`` fix each stage's ``k`` to the cascade's real funnel sizes
(the paper's Eq. with ``q1``, ``q2``); ``uncertainty_weighting=False`` uses the fixed weights
``e2e_weight``, ``retrieval_aux_weight``, ``ranking_aux_weight`` (which also scale the terms when
weighting is on; all 1 by default).

Where this differs from the authors' code, only for padded lists: their NeuralSort runs over the
padded width and their means divide by it (and a padded column adds the constant
``-log(1e-6)/M`` to ``L_joint``); here padded items are excluded from the sort and every mean
divides by the list's valid count ``n``, so a padded list gives exactly the loss of the unpadded
one. On full lists the two agree to floating-point precision (see the tests). A ground truth is
``label == 1`` (binary labels; the authors' graded ``rank_index`` labels mark the top ``g``).
"""

import math
from typing import ClassVar

import torch
from torch import nn

from ._validation import require_binary, require_bool, require_float, require_positive, require_shape
from .soft_sort import neural_sort, top_k_shares


def _optional_k(name: str, k: int | None) -> None:
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"{name} must be an int >= 1 or unset (the list's ground-truth count), got {k!r}")


class LCRONLoss(nn.Module):
    """LCRON end-to-end cascade loss plus per-stage single losses (see the module docstring).

    Args:
        temperature: NeuralSort temperature ``tau`` (the authors use 50).
        retrieval_k, ranking_k: each stage's ``k``; unset (default) = the list's ground-truth
            count, as in the authors' code. Set both to the cascade's funnel sizes to train for it.
        uncertainty_weighting: learn the single-loss balance as the authors' code does (default).
        e2e_weight, retrieval_aux_weight, ranking_aux_weight: multipliers of the three terms.
        eps: the authors' ``1e-6`` inside logarithms and normalisers.

    ``forward(retrieval_scores [B, M], ranking_scores [B, M], labels [B, M] in {0, 1},
    mask [B, M] bool | None) -> scalar``. ``forward_components`` returns the total and the
    detached terms; ``forward`` also stores them in :attr:`components` for logging.
    """

    kind: ClassVar[str] = "cascade"

    def __init__(
        self,
        temperature: float = 50.0,
        retrieval_k: int | None = None,
        ranking_k: int | None = None,
        uncertainty_weighting: bool = True,
        e2e_weight: float = 1.0,
        retrieval_aux_weight: float = 1.0,
        ranking_aux_weight: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        _optional_k("retrieval_k", retrieval_k)
        _optional_k("ranking_k", ranking_k)
        if (retrieval_k is None) != (ranking_k is None):
            raise ValueError(
                f"set both retrieval_k and ranking_k or neither, got {retrieval_k!r} and {ranking_k!r}"
            )
        if retrieval_k is not None and ranking_k is not None and ranking_k > retrieval_k:
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
            # the authors' LcronLossModel: recall_weight / prerank_weight, both starting at 1
            self.weight_retrieval = nn.Parameter(torch.ones(()))
            self.weight_ranking = nn.Parameter(torch.ones(()))
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
        dtype = retrieval_scores.dtype
        truth = (labels == 1) & mask
        n_truth = truth.sum(dim=-1)  # g per list
        n_valid = mask.sum(dim=-1).clamp_min(1).to(dtype)
        batch = retrieval_scores.shape[0]
        k1 = n_truth if self.retrieval_k is None else torch.full((batch,), self.retrieval_k)
        k2 = n_truth if self.ranking_k is None else torch.full((batch,), self.ranking_k)

        perm_ret = neural_sort(retrieval_scores, mask, self.temperature)
        perm_rank = neural_sort(ranking_scores, mask, self.temperature)

        def nll(prob: torch.Tensor) -> torch.Tensor:
            return -torch.log(prob + self.eps)

        def mean_over_lists(per_item: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            per_list = torch.where(keep, per_item, 0.0).sum(dim=-1) / n_valid
            return per_list.mean()

        in_ret, out_ret = top_k_shares(perm_ret, k1, self.eps)
        in_rank, out_rank = top_k_shares(perm_rank, k2, self.eps)
        survive_down = (1.0 - out_ret) * (1.0 - out_rank)
        joint = torch.where(truth, nll(in_ret * in_rank), nll(1.0 - survive_down))
        e2e = mean_over_lists(joint, mask)

        def single(perm: torch.Tensor) -> torch.Tensor:
            inside, outside = top_k_shares(perm, n_truth, self.eps)
            per_item = torch.where(truth, nll(inside), nll(outside))
            longer = (mask.sum(dim=-1) > n_truth).unsqueeze(-1)  # the authors' count > support_m
            return mean_over_lists(per_item, mask & longer)

        aux_ret, aux_rank = single(perm_ret), single(perm_rank)
        if self.uncertainty_weighting:
            w_ret = self.weight_retrieval.to(dtype)
            w_rank = self.weight_ranking.to(dtype)
            loss = (
                self.e2e_weight * e2e
                + self.ranking_aux_weight * (0.5 / w_rank.square()) * aux_rank
                + self.retrieval_aux_weight * (0.5 / w_ret.square()) * aux_ret
                + torch.log(w_rank * w_ret)
            )
        else:
            aux = self.retrieval_aux_weight * aux_ret + self.ranking_aux_weight * aux_rank
            loss = self.e2e_weight * e2e + aux
        return {
            "loss": loss,
            "e2e": e2e.detach(),
            "retrieval_aux": aux_ret.detach(),
            "ranking_aux": aux_rank.detach(),
        }

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
            f"temperature={self.temperature}, retrieval_k={self.retrieval_k}, ranking_k={self.ranking_k}, "
            f"uncertainty_weighting={self.uncertainty_weighting}, e2e_weight={self.e2e_weight}, "
            f"retrieval_aux_weight={self.retrieval_aux_weight}, ranking_aux_weight={self.ranking_aux_weight}"
        )
