"""The two baselines every recommender job needs, in the same registry as the paper losses.

* ``sampled_softmax`` (retrieval): ``-log softmax`` of the positive among itself and its sampled
  negatives, dot-product scores over a temperature. It is PSL with the exponential kept
  (``log Σ_j exp(d_uij / τ)`` with the ``j = i`` term), so it is built as exactly that rather than
  written a second time; masked negatives leave the partition function.
* ``bce`` (ctr): plain logloss on logits; ``reference_logits``/``reference_mask`` are accepted for
  the ``ctr`` input contract and ignored.
"""

from typing import ClassVar

import torch
from torch import nn

from ._retrieval import Similarity
from .psl import PairwiseSoftmaxLoss


class SampledSoftmaxLoss(PairwiseSoftmaxLoss):
    def __init__(self, temperature: float = 0.1, similarity: Similarity = "dot") -> None:
        super().__init__(
            activation="exp", temperature=temperature, similarity=similarity, include_positive=True
        )


class BinaryCrossEntropyLoss(nn.Module):
    kind: ClassVar[str] = "ctr"

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        reference_logits: torch.Tensor | None = None,
        reference_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if logits.shape != labels.shape:
            raise ValueError(
                f"labels: expected shape {tuple(logits.shape)} like logits, got {tuple(labels.shape)}"
            )
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
