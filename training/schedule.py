"""Learning-rate schedules over a whole job, applied to every optimizer of the trainer each step.

One function of the global step (so a resumed job continues the same curve), scaling each param
group's base learning rate: ``constant``; ``cosine`` decay to 0 over the configured epochs;
``linear`` decay to 0; each optionally after a linear warm-up. ``plateau`` is driven by model
selection instead: :meth:`LearningRateSchedule.reduce` multiplies every rate by a factor (not below
``min_lr``) after a validation that did not improve, as the SimpleX authors' trainer does; its
scale is part of the job state (:meth:`state_dict`), so a resumed job continues it. The schedule
sets ``lr`` in the param groups of the combined optimizer, which FBGEMM's fused table optimizers
read at their next step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

KINDS = ("constant", "cosine", "linear", "plateau")


class LearningRateSchedule:
    def __init__(
        self,
        optimizer: Optimizer,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        plateau_factor: float = 0.1,
        min_lr: float = 0.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"schedule must be one of {list(KINDS)}, got {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.plateau_factor = float(plateau_factor)
        self.min_lr = float(min_lr)
        self.scale = 1.0  # plateau: the product of the reductions so far
        # the base rate lives in the group (as torch's schedulers keep it), so a second schedule
        # over the same optimizer, or one after a checkpoint load, starts from it, not from a decayed lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "plateau":
            return self.scale
        done = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return 1.0 - done

    def set(self, step: int) -> None:
        if self.kind == "constant" and self.warmup_steps == 0:
            return
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            lr = group["initial_lr"] * f
            group["lr"] = max(lr, min(self.min_lr, group["initial_lr"])) if self.kind == "plateau" else lr

    def reduce(self) -> float:
        """Plateau: scale every rate by ``plateau_factor`` from the next step on; returns the
        largest resulting rate (for the log)."""
        self.scale *= self.plateau_factor
        return max(
            max(g["initial_lr"] * self.scale, min(self.min_lr, g["initial_lr"]))
            for g in self.optimizer.param_groups
        )

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state.get("scale", 1.0))
