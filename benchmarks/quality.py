"""Retrieval quality on the papers' own benchmarks: train each paper configuration with the
authors' protocol, score the test set once, and print one table beside the published numbers.

Every run is an ordinary training job (``run_training``): tracked in MLflow, model selection on
the validation split carved from the training data, the test set scored once with the selected
epoch. A benchmark *data set* (:data:`DATASETS`) names its config folder and, per model, the
published number it is held to and, where the paper searched a hyper-parameter, that grid: each
value is trained (optionally for fewer epochs, ``search_epochs``), the value with the best
*validation* score is kept, and its full run is the row; the test set never chooses anything.

Time to quality is a first-class column: the wall minutes of the job (data preparation included)
at which the selected weights had been scored on validation, when their test numbers reach the
paper's, else "not reached"; with epochs/s, examples/s, peak RSS, threads and the machine.

    .venv/bin/python benchmarks/quality.py --dataset gowalla [--models mf_ccl simplex_ccl]
    .venv/bin/python benchmarks/quality.py --dataset psl-electronic --search-epochs 20 --seeds 2
    rankforge benchmark-quality ...            (the same)

Run it alone on the machine: two jobs on two cores slow each other down.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from rankforge.benchmarks.machine import machine
from rankforge.errors import ConfigError, DataError, RankforgeError
from rankforge.quiet import quiet_third_party
from rankforge.settings import Settings, configure_mlflow

if TYPE_CHECKING:  # loaded when a benchmark runs, not when the command line starts
    import numpy as np

    from rankforge.features.pipeline import PreparedData
    from rankforge.training.config import TrainConfig


@dataclass(frozen=True)
class Published:
    """A published Recall@20 / NDCG@20 and where it comes from."""

    recall_at_20: float
    ndcg_at_20: float
    source: str


@dataclass(frozen=True)
class Entry:
    """One model of a benchmark: its config (``<folder>/<name>.toml``), the number it is held to,
    and the objective hyper-parameter the paper searched (``search`` values of ``search_param``)."""

    name: str
    paper: Published | None = None
    search_param: str | None = None
    search: tuple[float, ...] = ()
    default: bool = True  # run when no models are named (earlier rows stay runnable by name)


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str  # config folder, relative to the repository
    title: str
    entries: tuple[Entry, ...]

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ConfigError(
            f"no model {name!r} in benchmark {self.name!r}; models: {[e.name for e in self.entries]}"
        )


#: The PSL paper's temperature grid (Yang et al., NeurIPS 2024, Appendix B.5.1), for SL and PSL.
PSL_TEMPERATURES = (0.005, 0.025, 0.05, 0.1, 0.25)
_SIMPLEX = "SimpleX (Mao et al., CIKM 2021; reczoo/RecZoo result log)"
_PSL = "PSL paper, Table 1 (MF)"


def _psl(published: dict[str, tuple[float, float]]) -> tuple[Entry, ...]:
    """The PSL table of one data set: MF-BPR, then SL and the three PSL activations, whose
    temperature is searched on validation over the paper's grid."""
    return tuple(
        Entry(name, Published(*numbers, _PSL))
        if name == "mf_bpr"
        else Entry(name, Published(*numbers, _PSL), "temperature", PSL_TEMPERATURES)
        for name, numbers in published.items()
    )


DATASETS: dict[str, Dataset] = {
    "gowalla": Dataset(
        "gowalla",
        "configs/gowalla",
        "Gowalla (LightGCN split, ../shared/data/gowalla)",
        (
            Entry("popularity"),
            Entry(
                "mf_bpr", Published(0.1365, 0.1117, "RecBole 1.2.1 MF-BPR on this split, 24 min, one core")
            ),
            Entry("mf_ccl", Published(0.1837, 0.1493, "SimpleX authors' MF-CCL log (reczoo/RecZoo)")),
            Entry("simplex_ccl", Published(0.1872, 0.1557, _SIMPLEX)),
            # the earlier shared-pool rows (1000 negatives per batch, not per example)
            *(
                Entry(name, default=False)
                for name in (
                    "mf_ccl_shared_pool",
                    "simplex_ccl_shared_pool",
                    "mf_sampled_softmax",
                    "mf_psl_tanh",
                    "mf_psl_atan",
                    "mf_psl_relu",
                )
            ),
        ),
    ),
    "amazon-cds": Dataset(
        "amazon-cds",
        "configs/amazon_cds",
        "AmazonCDs_m1 (BARS, ../shared/data/amazon-cds-m1)",
        (Entry("simplex_ccl", Published(0.1763, 0.1145, _SIMPLEX)),),
    ),
    "psl-gowalla": Dataset(
        "psl-gowalla",
        "configs/psl_gowalla",
        "Gowalla (the PSL paper's split, ../shared/data/psl-ir-benchmark/gowalla)",
        _psl(
            {
                "mf_bpr": (0.1355, 0.1111),
                "mf_sl": (0.2064, 0.1624),
                "mf_psl_tanh": (0.2088, 0.1646),
                "mf_psl_atan": (0.2087, 0.1646),
                "mf_psl_relu": (0.2089, 0.1647),
            }
        ),
    ),
    "psl-electronic": Dataset(
        "psl-electronic",
        "configs/psl_electronic",
        "Amazon-Electronic (the PSL paper's split, ../shared/data/psl-ir-benchmark/amazon2014-electronic)",
        _psl(
            {
                "mf_bpr": (0.0816, 0.0527),
                "mf_sl": (0.0821, 0.0529),
                "mf_psl_tanh": (0.0832, 0.0535),
                "mf_psl_atan": (0.0832, 0.0535),
                "mf_psl_relu": (0.0838, 0.0541),
            }
        ),
    ),
}


@dataclass(frozen=True)
class QualityRow:
    name: str
    model: str
    objective: str
    recall_at_20: float
    ndcg_at_20: float
    best_epoch: int
    epochs_run: int
    epochs_per_second: float
    examples_per_second: float
    wall_minutes: float  # the whole job: data, training, every validation, the test and export
    minutes_to_paper: float | None  # wall minutes to the selected weights, if they reach the paper
    peak_rss_gb: float  # the whole job's process
    paper_recall_at_20: float | None
    paper_ndcg_at_20: float | None
    run_id: str | None
    bundle_dir: str
    selection: float = float("nan")  # the validation score that selected the run
    searched: dict[str, float] = field(default_factory=dict)  # grid value -> validation score
    seed: int = 0
    # further seeds of the same config: (seed, Recall@20, NDCG@20, bundle dir) each
    other_seeds: list[tuple[int, float, float, str]] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return 1 + len(self.other_seeds)

    def mean(self, metric: str) -> float:
        """A test metric's mean over the row's seeds (``recall_at_20`` or ``ndcg_at_20``)."""
        column = 1 if metric == "recall_at_20" else 2
        values = [getattr(self, metric), *(s[column] for s in self.other_seeds)]
        return sum(values) / len(values)


def with_overrides(config: TrainConfig, **training: object) -> TrainConfig:
    """``config`` with some ``[training]`` settings replaced (budget, threads), re-validated."""
    return _updated(config, training={k: v for k, v in training.items() if v is not None})


def _updated(config: TrainConfig, **sections: object) -> TrainConfig:
    raw = config.model_dump(mode="json", exclude={"source_path"})
    for section, values in sections.items():
        if isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    from rankforge.training.config import TrainConfig

    updated = TrainConfig.model_validate(raw)
    return updated.model_copy(update={"source_path": config.source_path})


def with_objective_param(
    config: TrainConfig, name: str, value: float, epochs: int | None = None
) -> TrainConfig:
    """A grid point: ``objective.params[name] = value`` in its own output folder (and, for a
    shortened search run, at most ``epochs`` epochs)."""
    assert config.objective is not None
    params = {**config.objective.params, name: value}
    objective = {**config.objective.model_dump(mode="json"), "params": params}
    output = f"{config.output_dir}_{name}{value:g}" + ("_search" if epochs else "")
    training = {"epochs": min(epochs, config.training.epochs)} if epochs else {}
    return _updated(config, objective=objective, output_dir=output, training=training)


def objective_label(config: TrainConfig) -> str:
    if config.objective is None:
        return "none (counted)"
    params = config.objective.params
    activation = params.get("activation")
    label = config.objective.name + (f"({activation})" if activation else "")
    return label + (f" t={params['temperature']:g}" if "temperature" in params else "")


def run_one(name: str, config: TrainConfig, paper: Published | None) -> QualityRow:
    """One job, in this process (the benchmark gives each job a fresh one)."""
    from rankforge.pipelines.train import run_training

    os.environ.setdefault("TQDM_DISABLE", "1")  # one table row per model, not a bar per batch
    started = time.monotonic()
    result = run_training(config)
    minutes = (time.monotonic() - started) / 60.0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    metrics = result.metrics
    recall, ndcg = metrics.get("recall@20", float("nan")), metrics.get("ndcg@20", float("nan"))
    train_seconds = sum(e.seconds for e in result.epochs)
    examples = sum(e.examples for e in result.epochs)
    reached = paper is not None and recall >= paper.recall_at_20 and ndcg >= paper.ndcg_at_20
    selection_name = config.selection[0]
    return QualityRow(
        name=name,
        model=config.model.kind,
        objective=objective_label(config),
        recall_at_20=recall,
        ndcg_at_20=ndcg,
        best_epoch=int(metrics.get("best_epoch", len(result.epochs))),
        epochs_run=len(result.epochs),
        epochs_per_second=len(result.epochs) / train_seconds if train_seconds else float("nan"),
        examples_per_second=examples / train_seconds if train_seconds else float("nan"),
        wall_minutes=minutes,
        minutes_to_paper=(result.best_epoch_minutes or minutes) if reached else None,
        peak_rss_gb=peak_gb,
        paper_recall_at_20=paper.recall_at_20 if paper else None,
        paper_ndcg_at_20=paper.ndcg_at_20 if paper else None,
        run_id=result.run_id,
        bundle_dir=str(result.bundle_dir),
        selection=metrics.get(f"best_val_{selection_name}", float("nan")),
        seed=config.seed,
    )


def table(
    rows: list[QualityRow],
    dataset: str,
    threads: int | None,
    parallel: int = 1,
    deltas: list[str] | None = None,
) -> str:
    """The markdown table the benchmark prints and ``benchmarks/README.md`` records (with the
    paired comparisons ``deltas`` below it)."""
    deltas = ["", *deltas] if deltas else []

    def number(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "—"

    lines = [
        f"{dataset}, {dt.date.today().isoformat()}, {machine()}, torch threads "
        f"{threads if threads is not None else 'as each config sets (training.threads)'} per job "
        f"(+1 batch thread), {parallel} job(s) at a time",
        "",
        "| model | objective | Recall@20 | paper | NDCG@20 | paper | best epoch / run | epochs/s "
        "| examples/s | wall min | min to paper | peak RSS GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        to_paper = (
            "—"
            if r.paper_recall_at_20 is None
            else (f"{r.minutes_to_paper:.1f}" if r.minutes_to_paper is not None else "not reached")
        )
        seeds = f" (mean of {r.seeds} seeds)" if r.seeds > 1 else ""
        lines.append(
            f"| {r.name} ({r.model}) | {r.objective}{seeds} | {r.mean('recall_at_20'):.4f} "
            f"| {number(r.paper_recall_at_20)} "
            f"| {r.mean('ndcg_at_20'):.4f} | {number(r.paper_ndcg_at_20)} | {r.best_epoch} / {r.epochs_run} "
            f"| {r.epochs_per_second:.4f} | {r.examples_per_second:,.0f} | {r.wall_minutes:.1f} | {to_paper} "
            f"| {r.peak_rss_gb:.2f} |"
        )
    searched = [r for r in rows if r.searched]
    if searched:
        lines.append("")
        for r in searched:
            grid = ", ".join(f"{k}: {v:.4f}" for k, v in r.searched.items())
            lines.append(f"{r.name}: validation score per grid value ({grid})")
    return "\n".join(lines + deltas)


@dataclass(frozen=True)
class _Job:
    name: str
    config: TrainConfig
    paper: Published | None
    grid_value: float | None = None


def _execute(jobs: list[_Job], parallel: int) -> list[tuple[_Job, QualityRow]]:
    """Run ``jobs``, each in a fresh process, ``parallel`` at a time; a failed job is reported on
    stderr and left out (one failed model must not cost the others their numbers)."""
    done: list[tuple[_Job, QualityRow]] = []
    with ProcessPoolExecutor(
        max_workers=parallel,
        mp_context=get_context("spawn"),
        max_tasks_per_child=1,
        initializer=quiet_third_party,  # a spawned job starts without the CLI's filters
    ) as pool:
        futures = {pool.submit(run_one, j.name, j.config, j.paper): j for j in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                done.append((job, future.result()))
            except Exception as exc:
                print(f"{job.name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return done


def _model_row(
    entry: Entry, config: TrainConfig, parallel: int, search_epochs: int | None
) -> tuple[QualityRow, TrainConfig] | None:
    """The row of one model and the config that produced it (its selected grid value applied)."""
    if not entry.search:
        done = _execute([_Job(entry.name, config, entry.paper)], 1)
        return (done[0][1], config) if done else None
    assert entry.search_param is not None
    grid = [
        _Job(entry.name, with_objective_param(config, entry.search_param, v, search_epochs), entry.paper, v)
        for v in entry.search
    ]
    finished = _execute(grid, parallel)
    if not finished:
        return None
    scores = {f"{job.grid_value:g}": row.selection for job, row in finished}
    best_job, best_row = max(finished, key=lambda f: f[1].selection)
    assert best_job.grid_value is not None
    selected = with_objective_param(config, entry.search_param, best_job.grid_value)
    if search_epochs is not None:  # the search was shortened: the selected value's full run is the row
        done = _execute([_Job(entry.name, selected, entry.paper)], 1)
        if not done:
            return None
        best_row = done[0][1]
    return replace(best_row, searched=dict(sorted(scores.items(), key=lambda kv: float(kv[0])))), selected


def _unsearched_rows(
    dataset: Dataset, configs: dict[str, TrainConfig], parallel: int
) -> list[tuple[QualityRow, TrainConfig]]:
    """Every model's row at its config's own value of the searched parameter, the models trained
    ``parallel`` at a time, in the order of ``configs``."""
    jobs = [_Job(name, config, dataset.entry(name).paper) for name, config in configs.items()]
    done = {job.name: row for job, row in _execute(jobs, parallel)}
    return [(done[name], config) for name, config in configs.items() if name in done]


def with_seed(config: TrainConfig, seed: int) -> TrainConfig:
    """``config`` with another seed (initialisation and sampling), in its own output folder; the
    data split (``data.validation_seed``) stays the same, so seeds are paired on one split."""
    return _updated(config, seed=seed, output_dir=f"{config.output_dir}_seed{seed}")


def paired_deltas(rows: list[QualityRow], config: TrainConfig, baseline: str = "mf_sl") -> list[str]:
    """Each PSL row against the ``baseline`` row on the same seeds: the paired user-bootstrap
    interval of the difference of test Recall@20 and NDCG@20, each user's value averaged over the
    seeds both rows have. Empty when either is missing."""
    import numpy as np

    from rankforge.evaluation.bootstrap import bootstrap_mean
    from rankforge.features.pipeline import prepare

    base = next((r for r in rows if r.name == baseline), None)
    others = [r for r in rows if r.name.startswith("mf_psl")]
    if base is None or not others:
        return []
    data = prepare(config.data)
    lines = []
    for other in others:
        pairs = _common_seeds(base, other)
        deltas: dict[str, list[np.ndarray]] = {metric: [] for metric in ("recall@20", "ndcg@20")}
        for base_dir, other_dir in pairs:
            a, b = _per_user(base_dir, data), _per_user(other_dir, data)
            for metric in deltas:
                deltas[metric].append(b[metric] - a[metric])
        parts = []
        for metric, values in deltas.items():
            interval = bootstrap_mean(np.mean(values, axis=0), n_resamples=1000, seed=0)
            parts.append(f"{metric} {interval.estimate:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]")
        users = len(deltas["ndcg@20"][0])
        lines.append(
            f"{other.name} - {baseline}: {'; '.join(parts)} (95% paired user bootstrap, "
            f"{len(pairs)} seed(s), {users} test users)"
        )
    return lines


def _common_seeds(a: QualityRow, b: QualityRow) -> list[tuple[str, str]]:
    dirs_a = {a.seed: a.bundle_dir, **{s: d for s, _, _, d in a.other_seeds}}
    dirs_b = {b.seed: b.bundle_dir, **{s: d for s, _, _, d in b.other_seeds}}
    return [(dirs_a[s], dirs_b[s]) for s in sorted(set(dirs_a) & set(dirs_b))]


def _per_user(bundle_dir: str, data: PreparedData) -> dict[str, np.ndarray]:
    """Test Recall@20 / NDCG@20 of every evaluable test user (in user order) of a bundle, scored
    as served (the bundle's own scoring space, training items masked)."""
    from rankforge.bundles.bundle import load_bundle
    from rankforge.evaluation.metrics import per_user_retrieval_metrics
    from rankforge.pipelines.bundle_scoring import score_retrieval

    scored = score_retrieval(load_bundle(bundle_dir, expect="retrieval"), data)
    values = per_user_retrieval_metrics(scored.scores, scored.relevant, scored.exclude, ks=(20,))
    return {metric: values[metric] for metric in ("recall@20", "ndcg@20")}


def run_benchmark(
    dataset: Dataset,
    names: list[str],
    budget_minutes: float | None = None,
    threads: int | None = None,
    output: Path | None = None,
    parallel: int = 1,
    search_epochs: int | None = None,
    seeds: int = 1,
    root: Path = Path("."),
    search: bool = True,
) -> list[QualityRow]:
    """Train every named model of ``dataset`` (configs under ``root / dataset.folder``), each job
    in a fresh process, ``parallel`` at a time, printing the table as models finish so a partial
    run still leaves its numbers.

    A searched model trains each grid value (``search_epochs`` epochs each, or its full config),
    keeps the value with the best validation score and, if the search runs were shortened, trains
    that value in full; with ``search=False`` every model trains at its config's value (the
    paper's selected one), all models ``parallel`` at a time. ``seeds > 1`` trains the selected
    config again with seeds 1.., and every PSL variant is compared with SL on the same seeds by a
    paired user-bootstrap interval."""
    from rankforge.training.config import load_config

    if parallel < 1 or seeds < 1:
        raise ConfigError(f"parallel and seeds must be >= 1, got {parallel} and {seeds}")
    configs = {}
    for name in names:
        dataset.entry(name)
        path = root / dataset.folder / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(f"no benchmark config {path}")
        configs[name] = with_overrides(load_config(path), time_budget_minutes=budget_minutes, threads=threads)
    for config in configs.values():
        if config.data.path is not None and not Path(config.data.path).exists():
            raise DataError(f"benchmark data not found: {config.data.path} (see ../shared/README.md)")
    # Create the tracking store and experiments here, once: jobs starting together on a new
    # SQLite store would race through its schema migration.
    settings = Settings.from_env()
    for experiment in sorted({c.experiment for c in configs.values()}):
        configure_mlflow(settings, experiment)
    if search:  # one model at a time: its grid may run in parallel
        produced_rows: Iterable[tuple[QualityRow, TrainConfig] | None] = (
            _model_row(dataset.entry(n), c, parallel, search_epochs) for n, c in configs.items()
        )
    else:  # every model at its config's value (the paper's selected one), all models in parallel
        produced_rows = _unsearched_rows(dataset, configs, parallel)
    rows: list[QualityRow] = []
    for produced in produced_rows:
        if produced is None:
            continue
        row, selected = produced
        name = row.name
        if seeds > 1:
            again = _execute(
                [_Job(name, with_seed(selected, s), row_paper(row)) for s in range(1, seeds)], parallel
            )
            row = replace(
                row,
                other_seeds=sorted(
                    (j.config.seed, r.recall_at_20, r.ndcg_at_20, r.bundle_dir) for j, r in again
                ),
            )
        rows.append(row)
        rows.sort(key=lambda r: names.index(r.name))
        deltas = paired_deltas(rows, selected)
        print(table(rows, dataset.title, threads, parallel, deltas), flush=True)
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps({"rows": [asdict(r) for r in rows], "deltas": deltas}, indent=2))
    return rows


def row_paper(row: QualityRow) -> Published | None:
    if row.paper_recall_at_20 is None or row.paper_ndcg_at_20 is None:
        return None
    return Published(row.paper_recall_at_20, row.paper_ndcg_at_20, "")


# -- command line (this script, and `rankforge benchmark-quality`) ---------------------------------


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per model, not per batch
    dataset = DATASETS[args.dataset]
    names = list(args.models or [e.name for e in dataset.entries if e.default])
    output = args.output or Path(f"runs/benchmarks/quality_{dataset.name}.json")
    rows = run_benchmark(
        dataset,
        names,
        budget_minutes=args.budget,
        threads=args.threads,
        output=output,
        parallel=args.parallel,
        search_epochs=args.search_epochs,
        seeds=args.seeds,
        search=not args.no_search,
    )
    return 0 if len(rows) == len(names) else 1  # a failed model was reported on stderr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="gowalla",
        help="the benchmark: its configs are configs/<folder>/NAME.toml (default: %(default)s)",
    )
    parser.add_argument(
        "--models", nargs="+", metavar="NAME", help="models to run (default: every model of the data set)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock minutes per job, data preparation to bundle "
        "(default: each config's training.time_budget_minutes)",
    )
    parser.add_argument(
        "--search-epochs",
        type=int,
        default=None,
        help="train each value of a searched grid for at most this many epochs, then the selected "
        "value in full (default: every grid value in full)",
    )
    parser.add_argument(
        "--no-search",
        action="store_true",
        help="train each searched model at its config's value (the paper's selected one) instead of "
        "searching the grid on validation; the models then train in parallel",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="train each selected config with this many seeds (default: 1)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="jobs trained at once, each in its own process with --threads threads (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per job (default: each config's training.threads)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON rows (default: runs/benchmarks/quality_DATASET.json)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quality.py", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except RankforgeError as exc:
        print(f"quality: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
