"""Training objectives of the ranking platform, one paper-faithful loss per module.

Each loss is a ``torch.nn.Module`` whose class attribute ``kind`` says which inputs it takes:

* ``"retrieval"`` -- :class:`CosineContrastiveLoss` (SimpleX CCL), :class:`PairwiseSoftmaxLoss`
  (PSL): ``(user_emb [B, D], pos_emb [B, D], neg_emb [B, N, D] | [N, D], neg_mask [B, N])``.
* ``"ctr"`` -- :class:`ConfidenceRankingLoss`: ``(logits [B], labels [B], reference_logits [B],
  reference_mask [B])`` (the mask: which examples the reference model could score).
* ``"auction"`` -- :class:`WelfareRankLoss`: ``(logits, labels, bids, mask, teacher_logits)``,
  all ``[A, M]`` (auctions x ads).
* ``"cascade"`` -- :class:`LCRONLoss`: ``(retrieval_scores, ranking_scores, labels, mask)``,
  all ``[B, M]``.

Baselines in the same registry: ``sampled_softmax`` and ``bpr`` (retrieval), ``bce`` (ctr).
Every retrieval objective declares the ``similarity`` it trains with (and PSL a
``score_temperature``); the trained model keeps that scoring function (``models.scoring``).
Use :func:`build_objective` to select one by name from a configuration.
"""

from .baselines import BinaryCrossEntropyLoss, SampledSoftmaxLoss
from .bpr import BPRLoss
from .ccl import CosineContrastiveLoss
from .confidence_ranking import ConfidenceRankingLoss
from .lcron import LCRONLoss
from .psl import PairwiseSoftmaxLoss
from .registry import OBJECTIVES, build_objective
from .soft_sort import neural_sort, top_k_shares
from .welfare_rankloss import WelfareRankLoss

__all__ = [
    "OBJECTIVES",
    "BPRLoss",
    "BinaryCrossEntropyLoss",
    "ConfidenceRankingLoss",
    "CosineContrastiveLoss",
    "LCRONLoss",
    "PairwiseSoftmaxLoss",
    "SampledSoftmaxLoss",
    "WelfareRankLoss",
    "build_objective",
    "neural_sort",
    "top_k_shares",
]
