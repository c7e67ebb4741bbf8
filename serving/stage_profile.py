"""Where a request's time goes, stage by stage: the serving profile behind benchmarks/serve_profile.

The service marks stage boundaries with :meth:`StageProfile.lap`; totals are kept per stage (a
lock per add, ~1 us), so a benchmark can print mean milliseconds per request for Redis, the user
tower, the index search, the ranker and the rest of the handler. Off (``None``) in production.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Protocol


class Laps(Protocol):
    """A request's stopwatch, real (:meth:`StageProfile.start`) or :data:`NO_LAPS`."""

    def lap(self, stage: str) -> None: ...

    def done(self) -> None: ...


class StageProfile:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.requests = 0

    def start(self) -> Laps:
        return _Laps(self)

    def add(self, laps: dict[str, float]) -> None:
        with self._lock:
            self.requests += 1
            for stage, seconds in laps.items():
                self.seconds[stage] += seconds

    def mean_ms(self) -> dict[str, float]:
        with self._lock:
            n = max(self.requests, 1)
            return {stage: 1e3 * s / n for stage, s in self.seconds.items()}

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.requests = 0


class _Laps:
    """One request's stopwatch: ``lap(stage)`` charges the time since the previous lap."""

    def __init__(self, profile: StageProfile) -> None:
        self.profile = profile
        self.last = self.began = time.perf_counter()
        self.laps: dict[str, float] = defaultdict(float)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] += now - self.last
        self.last = now

    def done(self) -> None:
        self.lap("respond")
        self.laps["handler total"] = time.perf_counter() - self.began
        self.profile.add(self.laps)


class _NoLaps:
    def lap(self, stage: str) -> None:
        pass

    def done(self) -> None:
        pass


NO_LAPS = _NoLaps()
