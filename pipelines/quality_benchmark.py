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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rankforge.errors import ConfigError, DataError
from rankforge.pipelines.train_config import TrainConfig, load_config

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
    paper_recall_at_20: float | None
    paper_ndcg_at_20: float | None
    run_id: str | None


def with_overrides(config: TrainConfig, **training: object) -> TrainConfig:
    """``config`` with some ``[training]`` settings replaced (budget, threads), re-validated."""
    raw = config.model_dump(mode="json", exclude={"source_path"})
    raw["training"].update({k: v for k, v in training.items() if v is not None})
    updated = TrainConfig.model_validate(raw)
    return updated.model_copy(update={"source_path": config.source_path})


def run_one(name: str, config: TrainConfig) -> QualityRow:
    from rankforge.pipelines.train import run_training

    started = time.monotonic()
    result = run_training(config)
    minutes = (time.monotonic() - started) / 60.0
    paper = PAPER.get(name)
    return QualityRow(
        name=name,
        model=config.model.kind,
        objective=config.objective.name
        + (f"({config.objective.params['activation']})" if "activation" in config.objective.params else ""),
        recall_at_20=result.metrics.get("recall@20", float("nan")),
        ndcg_at_20=result.metrics.get("ndcg@20", float("nan")),
        best_epoch=int(result.metrics.get("best_epoch", len(result.epochs))),
        epochs_run=len(result.epochs),
        wall_minutes=minutes,
        paper_recall_at_20=paper[0] if paper else None,
        paper_ndcg_at_20=paper[1] if paper else None,
        run_id=result.run_id,
    )


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def table(rows: list[QualityRow], threads: int | None, budget: float | None) -> str:
    """The markdown table the benchmark prints and ``benchmarks/README.md`` records."""

    def paper(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "—"

    lines = [
        f"Gowalla (LightGCN split), {dt.date.today().isoformat()}, {machine()}, "
        f"torch threads {threads}, budget {budget} min per model",
        "",
        "| model | objective | Recall@20 | paper | NDCG@20 | paper | best epoch / run | wall min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} ({r.model}) | {r.objective} | {r.recall_at_20:.4f} | {paper(r.paper_recall_at_20)} "
            f"| {r.ndcg_at_20:.4f} | {paper(r.paper_ndcg_at_20)} | {r.best_epoch} / {r.epochs_run} "
            f"| {r.wall_minutes:.1f} |"
        )
    return "\n".join(lines)


def run_benchmark(
    config_dir: Path,
    names: list[str],
    budget_minutes: float | None,
    threads: int | None,
    output: Path | None = None,
) -> list[QualityRow]:
    """Train every named configuration in turn (alone: they would fight over cores) and print
    the table after each, so a partial run still leaves its numbers."""
    configs = {}
    for name in names:
        path = config_dir / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(f"no benchmark config {path}")
        configs[name] = with_overrides(load_config(path), time_budget_minutes=budget_minutes, threads=threads)
    data_dir = next(iter(configs.values())).data.path
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"benchmark data not found: {data_dir} (see ../shared/README.md)")
    rows: list[QualityRow] = []
    for name, config in configs.items():
        rows.append(run_one(name, config))
        print(table(rows, threads, budget_minutes), flush=True)
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows
