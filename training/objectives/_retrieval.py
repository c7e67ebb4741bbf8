"""User/item scoring shared by the retrieval losses (CCL, PSL, BPR, sampled softmax).

Every retrieval loss is a function of scores: one positive score per user and a pool of negative
scores, ``(pos [B], neg [B, N], mask [B, N])`` (:meth:`RetrievalObjective.from_scores`). Its
``forward`` takes embeddings instead (one positive per user and negatives either per-example
``[B, N, D]`` or shared by the whole batch ``[N, D]``), scores them in the loss's similarity with
one batched matmul (for cosine the vectors are normalised first, ``B + N`` rows, never the
``[B, N]`` score matrix) and calls ``from_scores``. The trainer's fast path computes the scores
itself (``training.sampled_scores``) and calls ``from_scores`` directly, so both paths share one
definition of each loss.
"""

from typing import ClassVar, Literal

import torch
from torch import nn

from ._validation import (
    require_bool,
    require_float,
    require_shape,
)

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")

# Lower bound on embedding norms for cosine similarity (as in torch.nn.functional.cosine_similarity).
_NORM_EPS = 1e-8


def retrieval_scores(
    user_emb: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    neg_mask: torch.Tensor | None,
    similarity: Similarity,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the retrieval inputs and score them.

    Returns ``(pos_scores [B], neg_scores [B, N], neg_mask [B, N])``; the returned mask is all
    ``True`` when ``neg_mask`` is ``None``.
    """
    sizes: dict[str, int] = {}
    require_float("user_emb", user_emb)
    require_shape("user_emb", user_emb, ["B", "D"], sizes)
    require_float("pos_emb", pos_emb)
    require_shape("pos_emb", pos_emb, ["B", "D"], sizes)
    require_float("neg_emb", neg_emb)
    if neg_emb.dim() == 2:
        require_shape("neg_emb", neg_emb, ["N", "D"], sizes)
        shared = True
    elif neg_emb.dim() == 3:
        require_shape("neg_emb", neg_emb, ["B", "N", "D"], sizes)
        shared = False
    else:
        raise ValueError(
            f"neg_emb: expected shape [B={sizes['B']}, N, D={sizes['D']}] or shared [N, D={sizes['D']}],"
            f" got {tuple(neg_emb.shape)}"
        )
    if neg_mask is None:
        neg_mask = torch.ones(sizes["B"], sizes["N"], dtype=torch.bool, device=user_emb.device)
    else:
        require_bool("neg_mask", neg_mask)
        require_shape("neg_mask", neg_mask, ["B", "N"], sizes)

    if similarity == "cosine":
        # Normalise the vectors (B + N rows), not the [B, N] scores: same cosine, and the widest
        # tensors of the loss (and their backward) skip two elementwise passes.
        user_emb = user_emb / user_emb.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        pos_emb = pos_emb / pos_emb.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        neg_emb = neg_emb / neg_emb.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    elif similarity != "dot":
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
    pos = (user_emb * pos_emb).sum(dim=-1)
    if shared:
        neg = user_emb @ neg_emb.transpose(0, 1)  # [B, N]
    else:
        neg = torch.bmm(neg_emb, user_emb.unsqueeze(-1)).squeeze(-1)  # [B, N]
    return pos, neg, neg_mask


class RetrievalObjective(nn.Module):
    """A ``retrieval`` loss: ``forward(user_emb [B, D], pos_emb [B, D], neg_emb [B, N, D] or
    shared [N, D], neg_mask [B, N] bool | None) -> scalar``, defined by :meth:`from_scores`.

    Subclasses declare ``similarity`` (the scores' similarity: ``"cosine"`` or ``"dot"``); the
    trained model keeps it as its scoring function (``models.scoring``).
    """

    kind: ClassVar[str] = "retrieval"
    similarity: Similarity

    def forward(
        self,
        user_emb: torch.Tensor,
        pos_emb: torch.Tensor,
        neg_emb: torch.Tensor,
        neg_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pos, neg, mask = retrieval_scores(user_emb, pos_emb, neg_emb, neg_mask, self.similarity)
        return self.from_scores(pos, neg, mask)

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss (mean over the batch) of positive scores ``[B]`` and negative scores ``[B, N]``
        in ``self.similarity``; ``mask`` ``[B, N]`` is False where a negative does not count."""
        raise NotImplementedError
