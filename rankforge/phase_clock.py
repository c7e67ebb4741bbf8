"""Wall seconds per phase of a long job: where a train or prepare run's time goes.

One clock per job (or per bucket of a prepare run): ``lap(phase)`` charges the time since the
previous lap to ``phase`` (phases met twice add up), ``add`` merges time measured elsewhere (a
bucket's phases, prepared in another process), ``restart`` starts the next lap now without
charging the wait to anything. With ``log_as`` every lap is logged at INFO as ``"{log_as}:
{phase} {seconds}s"``, so a run of minutes says where it is.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class PhaseClock:
    def __init__(self, log_as: str | None = None) -> None:
        self.log_as = log_as
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.add(phase, now - self.last)
        if self.log_as is not None:
            log.info("%s: %s %.1fs", self.log_as, phase, now - self.last)
        self.last = now

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def restart(self) -> None:
        self.last = time.perf_counter()
