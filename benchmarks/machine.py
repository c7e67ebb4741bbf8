"""The machine a benchmark ran on, as its recorded tables name it."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
