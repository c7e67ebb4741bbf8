"""Confidence Ranking loss for CTR prediction.

Zhu, Liu, Wang, Zhao, Lin and Shao (JD.com), "Confidence Ranking for CTR Prediction", 2023
(arXiv:2307.01206), Sec. 3.
A retrained model ``f`` should be at least as confident about the observed label as the
previous (reference) model ``g`` that it replaces. On each example the two logits form a pair
ranked by the label: for a click ``f(x)`` should rank above ``g(x)``, for a non-click below.
With ``z = 2y - 1`` the margin is ``t = z * (f(x) - g(x))`` and the paper optimises convex
surrogates of ``1[t < 0]``::

    logistic: phi(t) = log(1 + exp(-t))      hinge: phi(t) = max(0, margin - t)

combined with the usual CTR log-loss::

    L = bce_weight * BCE(f(x), y) + rank_weight * mean_x phi(z * (f(x) - g(x)))

Why: the ranking term only asks ``f`` to beat ``g`` example by example, so it transfers what
the old model got right without forcing ``f`` to copy its mistakes (unlike distillation to
``g``'s probabilities), while the BCE term keeps ``f`` calibrated. ``g``'s logits are detached:
the reference model is never updated through this loss.
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

SURROGATES: tuple[str, ...] = ("logistic", "hinge")


class ConfidenceRankingLoss(nn.Module):
    """BCE plus the confidence-ranking term against a reference model's logits.

    Args:
        surrogate: ``"logistic"`` or ``"hinge"`` (the paper's convex surrogates).
        margin: hinge margin (ignored by ``"logistic"``).
        rank_weight: weight of the confidence-ranking term.
        bce_weight: weight of the pointwise log-loss on ``logits``.

    ``forward(logits [B], labels [B] in {0, 1}, reference_logits [B], reference_mask [B] bool
    | None) -> scalar``. Every example forms exactly one pair (new vs reference on the same
    label), so batches with no positive or only positives are handled like any other; an empty
    batch is rejected. ``reference_mask`` marks the examples the reference model could score (a
    retrained model meets items its predecessor never saw): the others get the BCE term alone,
    and the ranking term stays a mean over all ``B`` so an example's weight does not depend on
    how many others in its batch are covered.
    """

    kind: ClassVar[str] = "ctr"
    #: trains against a named previous model's logits (``objective.reference``), which it needs
    reference_model: ClassVar[str | None] = "required"

    def __init__(
        self,
        surrogate: str = "logistic",
        margin: float = 1.0,
        rank_weight: float = 1.0,
        bce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        require_choice("surrogate", surrogate, SURROGATES)
        require_non_negative("margin", margin)
        require_non_negative("rank_weight", rank_weight)
        require_non_negative("bce_weight", bce_weight)
        self.surrogate = surrogate
        self.margin = float(margin)
        self.rank_weight = float(rank_weight)
        self.bce_weight = float(bce_weight)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        reference_logits: torch.Tensor,
        reference_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_components(logits, labels, reference_logits, reference_mask)["loss"]

    def forward_components(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        reference_logits: torch.Tensor,
        reference_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "bce", "rank"}`` (unweighted components, weighted total)."""
        sizes: dict[str, int] = {}
        require_float("logits", logits)
        require_shape("logits", logits, ["B"], sizes)
        require_shape("labels", labels, ["B"], sizes)
        require_binary("labels", labels)
        require_float("reference_logits", reference_logits)
        require_shape("reference_logits", reference_logits, ["B"], sizes)
        if sizes["B"] == 0:
            raise ValueError("logits: expected at least one example, got shape (0,)")
        if reference_mask is not None:
            require_bool("reference_mask", reference_mask)
            require_shape("reference_mask", reference_mask, ["B"], sizes)

        target = labels.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        signed_margin = (2.0 * target - 1.0) * (logits - reference_logits.detach())
        if self.surrogate == "logistic":
            per_example = F.softplus(-signed_margin)
        else:
            per_example = torch.relu(self.margin - signed_margin)
        if reference_mask is not None:
            per_example = torch.where(reference_mask, per_example, 0.0)
        rank = per_example.mean()
        loss = self.bce_weight * bce + self.rank_weight * rank
        return {"loss": loss, "bce": bce.detach(), "rank": rank.detach()}

    def extra_repr(self) -> str:
        return (
            f"surrogate={self.surrogate!r}, margin={self.margin}, "
            f"rank_weight={self.rank_weight}, bce_weight={self.bce_weight}"
        )
