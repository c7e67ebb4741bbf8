"""What a command costs before and around its work: start-up of the CLI and a small train job.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 3]

Each command runs as a user runs it (a fresh ``rankforge`` process), ``--repeats`` times; the
table gives the median wall seconds and the peak RSS. The small job is a two-tower on a click log
of ~1,600 events (``tests/click_log.py``): its wall time is split into the phases the job itself
logs (``job_seconds_*`` in MLflow: prepare, set-up, epochs, test + export + register) and the
rest, which is Python start-up and importing torch, TorchRec, MLflow and Polars.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/click_log.py

from rankforge.benchmarks.machine import machine  # noqa: E402


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of ``rankforge ARGS`` in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "rankforge.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - started
    rss_kb = float(done.stderr.strip().splitlines()[-1])
    return wall, rss_kb / 1024, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from tests.click_log import write_click_log, write_config

    with tempfile.TemporaryDirectory(prefix="rankforge-startup-") as root:
        folder = write_click_log(Path(root) / "log")
        config = write_config(folder, "two_tower")
        env = {**os.environ, "RANKFORGE_HOME": str(Path(root) / "home"), "TQDM_DISABLE": "1"}
        rows: list[tuple[str, list[float], list[float]]] = []
        phases: list[dict[str, float]] = []
        commands = {
            "rankforge --help": ["--help"],
            "rankforge query --help": ["query", "--help"],
            "rankforge query (no server: UNAVAILABLE)": [
                *("query", "--user", "m_1", "--address", "127.0.0.1:1", "--timeout-s", "0.2"),
            ],
            "rankforge train (two-tower, 2 epochs)": ["train", str(config)],
            "rankforge evaluate (that bundle)": [
                *("evaluate", str(folder / "runs" / "two_tower" / "bundle"), "--data-config", str(config)),
                *("--resamples", "50"),
            ],
        }
        for label, command in commands.items():
            walls, rss = [], []
            for _ in range(args.repeats):
                wall, peak, out = timed(command, env)
                walls.append(wall)
                rss.append(peak)
                if command[0] == "train":
                    phases.append(_phases(out, env))
            rows.append((label, walls, rss))
    print(f"{machine()}, {time.strftime('%Y-%m-%d')}, median of {args.repeats}\n")
    print("| command | wall s | peak RSS MB |\n| --- | --- | --- |")
    for label, walls, rss in rows:
        print(f"| {label} | {statistics.median(walls):.2f} | {statistics.median(rss):.0f} |")
    if phases:
        train_wall = statistics.median(next(w for label, w, _ in rows if "train" in label))
        print("\n| train job phase | s |\n| --- | --- |")
        names = list(phases[0])
        medians = {name: statistics.median(p[name] for p in phases) for name in names}
        for name, seconds in medians.items():
            print(f"| {name} | {seconds:.2f} |")
        rest = train_wall - sum(medians.values())
        print(f"| start-up and imports (the rest of {train_wall:.1f} s) | {rest:.2f} |")
    return 0


def _phases(out: str, env: dict[str, str]) -> dict[str, float]:
    """The ``job time:`` line of a train summary: phase -> seconds."""
    line = next(line for line in out.splitlines() if line.startswith("job time: "))
    pairs = [part.rsplit(" ", 2) for part in line.removeprefix("job time: ").split(", ")]
    return {name: float(seconds) for name, seconds, _ in pairs}


if __name__ == "__main__":
    raise SystemExit(main())
