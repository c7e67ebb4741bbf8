"""Objective lookup for the trainer: a registered objective whose inputs fit the model."""

from __future__ import annotations

from typing import Any

from torch import nn

from rankforge.errors import ConfigError
from rankforge.training.objectives import OBJECTIVES, build_objective


def resolve_objective(name: str, params: dict[str, Any], kind: str | tuple[str, ...]) -> nn.Module:
    """Build objective ``name`` and check it takes inputs the model produces (``kind``: one input
    contract, or several the model's task can feed)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    loss = build_objective(name, **params)
    got = getattr(loss, "kind", None)
    if got not in kinds:
        fitting = sorted(n for n, c in OBJECTIVES.items() if getattr(c, "kind", None) in kinds)
        shown = kinds[0] if len(kinds) == 1 else kinds
        raise ConfigError(
            f"objective {name!r} takes {got!r} inputs but this model trains on {shown!r} ones; "
            f"use one of {fitting}"
        )
    return loss
