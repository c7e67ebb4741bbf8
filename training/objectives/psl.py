"""PSL, the Pairwise Softmax Loss.

Yang et al., "PSL: Rethinking and Improving Softmax Loss from Pairwise Perspective for
Recommendation", NeurIPS 2024, Sec. 3. The softmax loss written over score differences
``d_uij = s_uj - s_ui`` (``i`` the positive, ``j`` any item) is::

    L_SL(u, i)  = log sum_j exp(d_uij) ^ (1 / tau)
    L_PSL(u, i) = log sum_j sigma(d_uij) ^ (1 / tau)

PSL replaces the exponential by an activation ``sigma`` that still bounds the 0/1 step
``1[d >= 0] <= sigma(d)`` but grows more slowly than ``exp`` for ``d > 0``; this makes the loss a
tighter DCG surrogate and damps the weight of (possibly false) hard negatives. The paper's
activations (its ``sigma_tanh``, ``sigma_atan``, ``sigma_relu``)::

    tanh: sigma(d) = tanh(d) + 1        atan: sigma(d) = arctan(d) + 1
    relu: sigma(d) = max(d + 1, 0)      exp:  sigma(d) = exp(d)   (plain softmax loss, baseline)

It is computed in log space as ``logsumexp_j(log sigma(d_uij) / tau)``; ``tanh`` uses the exact
identity ``tanh(d) + 1 = 2 * sigmoid(2d)`` so it stays finite for very negative dot products.
``sigma_relu`` is 0 for ``d <= -1`` and ``sigma_atan`` would turn negative for ``d < -tan(1)``
(outside the paper's range ``d in [-1, 1]``); both are clipped at 0, i.e. such a negative is
ranked "far enough" below the positive and contributes nothing.

Sum over ``j``: the paper sums over all items, which includes ``j = i`` (``sigma(0) = 1``).
With ``include_positive=True`` (default) that term is kept, so the loss is ``>= 0`` and a user
with no valid negative contributes exactly 0. ``include_positive=False`` sums over the sampled
negatives only, like the authors' public code; a user whose negatives all contribute 0 (all
masked, or all clipped) then contributes 0 instead of ``-inf``.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._retrieval import SIMILARITIES, RetrievalObjective, Similarity
from ._validation import require_choice, require_positive

_LN2 = 0.6931471805599453


def _log_clipped(value: torch.Tensor) -> torch.Tensor:
    """``log(max(value, 0))`` with ``-inf`` (and a zero, not NaN, gradient) where value <= 0."""
    positive = value > 0
    return torch.where(positive, torch.log(torch.where(positive, value, 1.0)), float("-inf"))


LOG_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": lambda d: _LN2 + F.logsigmoid(2.0 * d),
    "atan": lambda d: _log_clipped(torch.atan(d) + 1.0),
    "relu": lambda d: _log_clipped(d + 1.0),
    "exp": lambda d: d,
}


class PairwiseSoftmaxLoss(RetrievalObjective):
    """PSL over one positive and ``N`` (possibly masked) sampled negatives per user.

    Args:
        activation: ``"tanh"``, ``"atan"`` or ``"relu"`` (the paper's PSL variants), or ``"exp"``
            for the plain sampled softmax loss.
        temperature: ``tau`` in the formula (the exponent ``1 / tau``).
        similarity: ``"cosine"`` (the paper's setting, ``d`` in ``[-2, 2]``) or ``"dot"``.
        score_temperature: scores are divided by it before taking differences. The authors'
            code uses cosine / ``score_temperature`` with ``score_temperature >= 2`` to keep
            ``d`` in ``[-1, 1]``; 1.0 leaves scores unchanged.
        include_positive: keep the ``j = i`` term of the paper's sum (see module docstring).

    ``forward(user_emb [B, D], pos_emb [B, D], neg_emb [B, N, D] or shared [N, D],
    neg_mask [B, N] bool | None) -> scalar`` (mean over the batch).
    """

    def __init__(
        self,
        activation: str = "tanh",
        temperature: float = 0.2,
        similarity: Similarity = "cosine",
        score_temperature: float = 1.0,
        include_positive: bool = True,
    ) -> None:
        super().__init__()
        require_choice("activation", activation, tuple(LOG_ACTIVATIONS))
        require_positive("temperature", temperature)
        require_choice("similarity", similarity, SIMILARITIES)
        require_positive("score_temperature", score_temperature)
        if not isinstance(include_positive, bool):
            raise ValueError(f"include_positive must be a bool, got {include_positive!r}")
        self.activation = activation
        self.temperature = float(temperature)
        self.similarity: Similarity = similarity
        self.score_temperature = float(score_temperature)
        self.include_positive = include_positive

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        diff = (neg - pos.unsqueeze(-1)) / self.score_temperature  # d_uij, [B, N]
        terms = LOG_ACTIVATIONS[self.activation](diff) / self.temperature
        terms = terms.masked_fill(~mask, float("-inf"))
        if self.include_positive:
            # j = i: d_uii = 0 and sigma(0) = 1 for every activation, so the log-term is 0.
            terms = torch.cat([terms.new_zeros(terms.shape[0], 1), terms], dim=-1)
        empty = torch.isneginf(terms).all(dim=-1, keepdim=True)  # only possible without j = i
        per_user = torch.logsumexp(terms.masked_fill(empty, 0.0), dim=-1)
        per_user = per_user.masked_fill(empty.squeeze(-1), 0.0)
        return per_user.mean()

    def extra_repr(self) -> str:
        return (
            f"activation={self.activation!r}, temperature={self.temperature}, "
            f"similarity={self.similarity!r}, score_temperature={self.score_temperature}, "
            f"include_positive={self.include_positive}"
        )
