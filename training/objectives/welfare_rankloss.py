"""Weighted pairwise rankloss for welfare maximisation in ad auctions.

Lyu, Feng, Robertson, Koyejo, "Pairwise Ranking Losses of Click-Through Rates Prediction for
Welfare Maximization in Ad Auctions", ICML 2023 (PMLR 202:23239-23263). An auction ranks ads by
eCPM ``b_i * p_i`` (bid times predicted CTR), and its welfare is lost exactly when an ad with
the larger realised value ``b_i * y_i`` is ranked below another one. The paper therefore weights
a pairwise logistic loss over ads of the same auction by the bid-weighted label::

    L = 1/|P| * sum_{(i, j) in P} b_i * y_i * log(1 + exp(-(s_i - s_j)))

where ``P`` holds the ordered pairs ``i != j`` of valid ads in the same auction and ``s`` is
the model's eCPM score. ``score="log_ecpm"`` (default) uses ``s_i = log b_i + log sigmoid(f_i)``,
so ``sigmoid(s_i - s_j) = b_i p_i / (b_i p_i + b_j p_j)``; in expectation over clicks the loss is
minimised when predicted CTR ratios equal true CTR ratios, i.e. when the auction picks the
welfare-maximising ad. ``score="ecpm"`` uses the raw ``s_i = b_i * sigmoid(f_i)`` instead.

The unit of the bids (cents or dollars):

* is irrelevant to the *minimiser* and to each auction's ranking with ``log_ecpm``: a factor ``c``
  on every bid adds ``log c`` to every score and cancels in ``s_i - s_j``;
* is NOT irrelevant to the loss *value and gradients*: the weights ``b_i y_i`` scale by ``c``, so
  bids in cents instead of dollars give a loss and gradients 100 times larger (with plain SGD, a
  100 times larger step; beside a BCE term, a 100 times smaller BCE share);
* changes even the minimiser with ``ecpm``, whose score differences scale by ``c``.

``bid_normalization="auction_mean"`` divides every auction's bids by their mean over its valid
ads before anything else, which removes the unit from all of the above (an auction's weights then
average ``y``). It re-weights auctions relative to each other (an auction of high bids no longer
dominates), so it is an option, not the paper's objective: the default ``"none"`` is the paper's.

Teacher-calibrated variant (the paper's calibration with teacher-generated labels): the noisy
click ``y_i`` in the weight is replaced by a teacher network's CTR,
``y~_i = (1 - a) * y_i + a * sigmoid(t_i)`` with ``a = teacher_weight`` (``a = 1``: teacher
labels only, as in the paper), which lowers the variance of the weights and only needs the
teacher to have small l2 error. An optional pointwise BCE term (``bce_weight``)
anchors the absolute CTR level, which a purely pairwise loss leaves free.

Provenance: the weight ``b_i * y_i`` and the log-eCPM score are our reading of the paper; the
exact constants are to be checked against the paper's text with the auction work (issue #12).
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    require_binary,
    require_bool,
    require_choice,
    require_float,
    require_non_negative,
    require_shape,
)

SCORES: tuple[str, ...] = ("log_ecpm", "ecpm")
BID_NORMALIZATIONS: tuple[str, ...] = ("none", "auction_mean")


class WelfareRankLoss(nn.Module):
    """Bid-weighted pairwise logistic loss over ads of the same auction (padded layout).

    Args:
        score: ``"log_ecpm"`` (default) or ``"ecpm"``, see the module docstring.
        teacher_weight: ``a`` in ``y~ = (1 - a) y + a sigmoid(teacher)``; used only when
            ``teacher_logits`` are given. Must lie in ``[0, 1]``.
        bce_weight: weight of an optional pointwise BCE term on the valid ads (0 = off).
        bid_normalization: ``"none"`` (the paper's) or ``"auction_mean"`` (bids divided by their
            auction's mean, so the loss does not depend on the bid unit; see the module docstring).

    ``forward(logits [A, M], labels [A, M] in {0, 1}, bids [A, M] > 0, mask [A, M] bool,
    teacher_logits [A, M] | None) -> scalar``: ``A`` auctions of up to ``M`` ads each, padding
    marked ``False`` in ``mask``. The pair term is averaged over all valid ordered pairs in the
    batch; an auction with fewer than two valid ads has no pair and contributes 0, and a batch
    without any pair gives a zero pair term (never NaN). Auctions without a click have zero
    weights and contribute 0 (unless a teacher gives them soft labels).
    """

    kind: ClassVar[str] = "auction"
    #: a named teacher (``objective.reference``) may calibrate the click labels
    reference_model: ClassVar[str | None] = "optional"

    def __init__(
        self,
        score: str = "log_ecpm",
        teacher_weight: float = 1.0,
        bce_weight: float = 0.0,
        bid_normalization: str = "none",
    ) -> None:
        super().__init__()
        require_choice("score", score, SCORES)
        require_choice("bid_normalization", bid_normalization, BID_NORMALIZATIONS)
        self.bid_normalization = bid_normalization
        require_non_negative("teacher_weight", teacher_weight)
        if teacher_weight > 1:
            raise ValueError(f"teacher_weight must lie in [0, 1], got {teacher_weight!r}")
        require_non_negative("bce_weight", bce_weight)
        self.score = score
        self.teacher_weight = float(teacher_weight)
        self.bce_weight = float(bce_weight)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        bids: torch.Tensor,
        mask: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_components(logits, labels, bids, mask, teacher_logits)["loss"]

    def forward_components(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        bids: torch.Tensor,
        mask: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "rank", "bce"}`` (unweighted components, weighted total)."""
        self._validate(logits, labels, bids, mask, teacher_logits)
        target = labels.to(logits.dtype)
        safe_bids = torch.where(mask, bids.to(logits.dtype), 1.0)
        if self.bid_normalization == "auction_mean":
            valid = mask.to(logits.dtype)
            mean = (safe_bids * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1.0)
            safe_bids = torch.where(mask, safe_bids / mean, 1.0)

        value = target
        if teacher_logits is not None:
            teacher = torch.sigmoid(teacher_logits.detach().to(logits.dtype))
            value = (1.0 - self.teacher_weight) * target + self.teacher_weight * teacher
        weight = (safe_bids * value).masked_fill(~mask, 0.0)  # b_i * y~_i, [A, M]

        if self.score == "log_ecpm":
            score = torch.log(safe_bids) + F.logsigmoid(logits)
        else:
            score = safe_bids * torch.sigmoid(logits)
        diff = score.unsqueeze(-1) - score.unsqueeze(-2)  # s_i - s_j, [A, M, M]
        eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
        pairs = mask.unsqueeze(-1) & mask.unsqueeze(-2) & ~eye  # ordered pairs i != j
        pair_loss = weight.unsqueeze(-1) * F.softplus(-diff)
        n_pairs = pairs.sum()
        rank = torch.where(pairs, pair_loss, 0.0).sum() / n_pairs.clamp_min(1).to(logits.dtype)

        n_valid = mask.sum()
        bce_all = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = torch.where(mask, bce_all, 0.0).sum() / n_valid.clamp_min(1).to(logits.dtype)

        loss = rank + self.bce_weight * bce if self.bce_weight else rank
        return {"loss": loss, "rank": rank.detach(), "bce": bce.detach()}

    @staticmethod
    def _validate(
        logits: torch.Tensor,
        labels: torch.Tensor,
        bids: torch.Tensor,
        mask: torch.Tensor,
        teacher_logits: torch.Tensor | None,
    ) -> None:
        sizes: dict[str, int] = {}
        require_float("logits", logits)
        require_shape("logits", logits, ["A", "M"], sizes)
        require_shape("labels", labels, ["A", "M"], sizes)
        require_float("bids", bids)
        require_shape("bids", bids, ["A", "M"], sizes)
        require_bool("mask", mask)
        require_shape("mask", mask, ["A", "M"], sizes)
        require_binary("labels", labels[mask])  # padding may hold anything
        if teacher_logits is not None:
            require_float("teacher_logits", teacher_logits)
            require_shape("teacher_logits", teacher_logits, ["A", "M"], sizes)
        if bool((bids[mask] <= 0).any()) or not bool(torch.isfinite(bids[mask]).all()):
            raise ValueError("bids: expected finite bids > 0 on every valid (mask=True) ad")

    def extra_repr(self) -> str:
        return (
            f"score={self.score!r}, teacher_weight={self.teacher_weight}, bce_weight={self.bce_weight}, "
            f"bid_normalization={self.bid_normalization!r}"
        )
