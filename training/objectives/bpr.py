"""BPR, Bayesian Personalised Ranking (Rendle et al., UAI 2009), the MF-BPR baseline.

For a user ``u``, its positive ``i`` and sampled negatives ``j``::

    L_BPR(u, i) = -1/|N| * sum_{j in N} log sigma(s_ui - s_uj)

with ``s`` the dot product (the paper's MF score; LightGCN's MF-BPR baseline). With one negative
per positive this is the paper's loss exactly; with a pool of negatives it is its average over the
pool. Masked negatives are left out of the average; a user with none contributes 0.
"""

import torch
import torch.nn.functional as F

from ._retrieval import SIMILARITIES, RetrievalObjective, Similarity
from ._validation import require_choice


class BPRLoss(RetrievalObjective):
    """``forward(user_emb [B, D], pos_emb [B, D], neg_emb [B, N, D] or shared [N, D],
    neg_mask [B, N] bool | None) -> scalar`` (mean over the batch)."""

    def __init__(self, similarity: Similarity = "dot") -> None:
        super().__init__()
        require_choice("similarity", similarity, SIMILARITIES)
        self.similarity: Similarity = similarity

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        terms = -F.logsigmoid(pos.unsqueeze(-1) - neg).masked_fill(~mask, 0.0)
        count = mask.sum(dim=-1).clamp_min(1).to(terms.dtype)
        return (terms.sum(dim=-1) / count).mean()

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}"
