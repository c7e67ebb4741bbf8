"""Retrieval quality on a real benchmark: train each paper configuration, score the test set once,
and print one table beside the published numbers.

Every run is an ordinary training job (``run_training``): tracked in MLflow, model selection on the
validation split carved from the training data, the test set scored once with the selected epoch.
The table records what each run reached, the epoch it selected, and the wall time of the whole job
(data preparation to registered bundle), with the machine, thread count and date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from rankforge.errors import ConfigError, DataError
from rankforge.pipelines.train_config import TrainConfig, load_config
from rankforge.settings import Settings, configure_mlflow

#: Published numbers on the LightGCN split of Gowalla (Recall@20, NDCG@20): SimpleX (Mao et al.,
#: CIKM 2021, Table 3), LightGCN (He et al., SIGIR 2020) and its MF-BPR baseline.
PAPER: dict[str, tuple[float, float, str]] = {
    "mf_bpr": (0.129, 0.111, "MF-BPR (LightGCN paper)"),
    "mf_ccl": (0.1872, 0.1557, "SimpleX (target for MF-CCL)"),
    "simplex_ccl": (0.1872, 0.1557, "SimpleX"),
    "lightgcn": (0.1830, 0.1554, "LightGCN"),
}
#: The configurations of the Gowalla table, in order (files ``configs/gowalla/NAME.toml``).
GOWALLA_MODELS = (
    "popularity",
    "mf_bpr",
    "mf_sampled_softmax",
    "mf_ccl",
    "simplex_ccl",
    "mf_psl_tanh",
    "mf_psl_atan",
    "mf_psl_relu",
)


@dataclass(frozen=True)
class QualityRow:
    name: str
    model: str
    objective: str
    recall_at_20: float
    ndcg_at_20: float
    best_epoch: int
    epochs_run: int
    wall_minutes: float
    peak_rss_gb: float  # the whole job's process: data, training, validation, test, export
    paper_recall_at_20: float | None
    paper_ndcg_at_20: float | None
    run_id: str | None


def with_overrides(config: TrainConfig, **training: object) -> TrainConfig:
    """``config`` with some ``[training]`` settings replaced (budget, threads), re-validated."""
    raw = config.model_dump(mode="json", exclude={"source_path"})
    raw["training"].update({k: v for k, v in training.items() if v is not None})
    updated = TrainConfig.model_validate(raw)
    return updated.model_copy(update={"source_path": config.source_path})


def objective_label(config: TrainConfig) -> str:
    if config.objective is None:
        return "none (counted)"
    activation = config.objective.params.get("activation")
    return config.objective.name + (f"({activation})" if activation else "")


def run_one(name: str, config: TrainConfig) -> QualityRow:
    """One model, in this process (the benchmark gives each model a fresh one)."""
    from rankforge.pipelines.train import run_training

    os.environ.setdefault("TQDM_DISABLE", "1")  # one table row per model, not a bar per batch
    started = time.monotonic()
    result = run_training(config)
    minutes = (time.monotonic() - started) / 60.0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    paper = PAPER.get(name)
    return QualityRow(
        name=name,
        model=config.model.kind,
        objective=objective_label(config),
        recall_at_20=result.metrics.get("recall@20", float("nan")),
        ndcg_at_20=result.metrics.get("ndcg@20", float("nan")),
        best_epoch=int(result.metrics.get("best_epoch", len(result.epochs))),
        epochs_run=len(result.epochs),
        wall_minutes=minutes,
        peak_rss_gb=peak_gb,
        paper_recall_at_20=paper[0] if paper else None,
        paper_ndcg_at_20=paper[1] if paper else None,
        run_id=result.run_id,
    )


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def table(rows: list[QualityRow], threads: int | None, budget: float | None, parallel: int = 1) -> str:
    """The markdown table the benchmark prints and ``benchmarks/README.md`` records."""

    def paper(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "—"

    lines = [
        f"Gowalla (LightGCN split), {dt.date.today().isoformat()}, {machine()}, "
        f"torch threads {threads} per job, {parallel} job(s) at a time, "
        f"budget {budget if budget is not None else 'per config'} min per model",
        "",
        "| model | objective | Recall@20 | paper | NDCG@20 | paper | best epoch / run | wall min "
        "| peak RSS GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} ({r.model}) | {r.objective} | {r.recall_at_20:.4f} | {paper(r.paper_recall_at_20)} "
            f"| {r.ndcg_at_20:.4f} | {paper(r.paper_ndcg_at_20)} | {r.best_epoch} / {r.epochs_run} "
            f"| {r.wall_minutes:.1f} | {r.peak_rss_gb:.2f} |"
        )
    return "\n".join(lines)


def run_benchmark(
    config_dir: Path,
    names: list[str],
    budget_minutes: float | None,
    threads: int | None,
    output: Path | None = None,
    parallel: int = 1,
) -> list[QualityRow]:
    """Train every named configuration, each in a fresh process, ``parallel`` at a time (with one
    torch thread each, two jobs on two cores do not slow each other), printing the table as
    models finish so a partial run still leaves its numbers. ``budget_minutes`` replaces each
    config's ``training.time_budget_minutes``; ``None`` keeps the configs' own."""
    if parallel < 1:
        raise ConfigError(f"parallel must be >= 1, got {parallel}")
    configs = {}
    for name in names:
        path = config_dir / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(f"no benchmark config {path}")
        configs[name] = with_overrides(load_config(path), time_budget_minutes=budget_minutes, threads=threads)
    for config in configs.values():
        if config.data.path is not None and not Path(config.data.path).is_dir():
            raise DataError(f"benchmark data not found: {config.data.path} (see ../shared/README.md)")
    # Create the tracking store and experiments here, once: jobs starting together on a new
    # SQLite store would race through its schema migration.
    settings = Settings.from_env()
    for experiment in sorted({c.experiment for c in configs.values()}):
        configure_mlflow(settings, experiment)
    rows: list[QualityRow] = []
    with ProcessPoolExecutor(
        max_workers=parallel, mp_context=get_context("spawn"), max_tasks_per_child=1
    ) as pool:
        futures = {pool.submit(run_one, name, config): name for name, config in configs.items()}
        for future in as_completed(futures):
            try:
                rows.append(future.result())
            except Exception as exc:  # one failed model must not cost the others their numbers
                print(f"{futures[future]}: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            rows.sort(key=lambda r: names.index(r.name))
            print(table(rows, threads, budget_minutes, parallel), flush=True)
            if output is not None:
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows
