"""Learning-rate schedules over a whole job, applied to every optimizer of the trainer each step.

One function of the global step (so a resumed job continues the same curve), scaling each param
group's base learning rate: ``constant``; ``cosine`` decay to 0 over the configured epochs;
``linear`` decay to 0; each optionally after a linear warm-up. It sets ``lr`` in the param groups
of the combined optimizer, which FBGEMM's fused table optimizers read at their next step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


class LearningRateSchedule:
    def __init__(self, optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int = 0) -> None:
        if kind not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be constant, cosine or linear, got {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        # the base rate lives in the group (as torch's schedulers keep it), so a second schedule
        # over the same optimizer, or one after a checkpoint load, starts from it, not from a decayed lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        done = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return 1.0 - done

    def set(self, step: int) -> None:
        if self.kind == "constant" and self.warmup_steps == 0:
            return
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
