"""Whether a process of this host is still running: what decides that a run's leftovers (a
temporary folder, an announced feature-store write) were abandoned by a process that died."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
