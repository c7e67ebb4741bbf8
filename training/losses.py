"""Objective lookup for the trainer: the shared registry first, two baseline losses as a fallback.

The objectives package is the one place for paper losses; the trainer only adds the two standard
baselines every recommender job needs (sampled softmax for retrieval, BCE for CTR) when the
registry does not provide them, with the same ``kind`` input contracts.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from rankforge.errors import ConfigError
from rankforge.training.objectives import OBJECTIVES, build_objective


class SampledSoftmaxLoss(nn.Module):
    """Softmax over one positive and its sampled negatives (dot product / temperature).

    ``forward(user_emb [B, D], pos_emb [B, D], neg_emb [B, N, D] | [N, D], neg_mask [B, N] | None)``;
    masked negatives (accidental hits of the positive) are left out of the partition function.
    """

    kind: ClassVar[str] = "retrieval"

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not isinstance(temperature, int | float) or temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(
        self,
        user_emb: torch.Tensor,
        pos_emb: torch.Tensor,
        neg_emb: torch.Tensor,
        neg_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pos = (user_emb * pos_emb).sum(-1, keepdim=True)
        if neg_emb.dim() == 2:
            neg = user_emb @ neg_emb.T
        else:
            neg = torch.bmm(neg_emb, user_emb.unsqueeze(-1)).squeeze(-1)
        if neg_mask is not None:
            neg = neg.masked_fill(~neg_mask, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return nn.functional.cross_entropy(logits, target)


class BinaryCrossEntropyLoss(nn.Module):
    """Plain logloss; ``reference_logits`` is accepted for the ``ctr`` contract and ignored."""

    kind: ClassVar[str] = "ctr"

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, reference_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


BUILTIN: dict[str, type[nn.Module]] = {"sampled_softmax": SampledSoftmaxLoss, "bce": BinaryCrossEntropyLoss}


def _build_builtin(name: str, params: dict[str, Any]) -> nn.Module:
    cls = BUILTIN[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"objective {name!r}: unknown hyper-parameter(s) {unknown}; valid: {valid}")
    try:
        return cls(**params)
    except ValueError as exc:
        raise ConfigError(f"objective {name!r}: {exc}") from exc


def resolve_objective(name: str, params: dict[str, Any], kind: str) -> nn.Module:
    """Build objective ``name`` and check it takes the inputs the model produces (``kind``)."""
    if name in OBJECTIVES:
        loss = build_objective(name, **params)
    elif name in BUILTIN:
        loss = _build_builtin(name, params)
    else:
        known = sorted(set(OBJECTIVES) | set(BUILTIN))
        raise ConfigError(f"unknown objective {name!r}; valid objectives: {known}")
    got = getattr(loss, "kind", None)
    if got != kind:
        fitting = sorted(n for n, c in {**OBJECTIVES, **BUILTIN}.items() if getattr(c, "kind", None) == kind)
        raise ConfigError(
            f"objective {name!r} takes {got!r} inputs but this model trains on {kind!r} ones; "
            f"use one of {fitting}"
        )
    return loss
