"""The quality suite: every trained model kind with every objective it takes, on real data, against
its trivial floor and against the number recorded for it.

A green test suite once let Recall@20 of CCL on the default two-tower fall from 0.16-0.20 to
0.09-0.14 (issue #33): nothing measured quality. Here every case is a small fixed training config
(one seed, fixed epochs, one torch thread, no model selection) trained in process and scored once
on its test split:

* retrieval: each retrieval model kind (``training.model_kinds``) x each retrieval objective
  (``training.objectives``), on MovieLens latest-small (../shared/data), each user's last 5
  positives held out; Recall@20 against the most popular unseen items;
* ranking: BCE, and Confidence Ranking against a previous model (the BCE twin, exported as a
  bundle: the reference a retraining job reads); AUC on a time split against each item's positive
  rate in training;
* auctions: the welfare rankloss and its BCE twin on simulated auctions (true CTRs known);
  the welfare ratio against ranking by each ad's click rate in the training auctions;
* cascade: LCRON, its retrieval stage and the funnel (the retrieval stage's top 100 re-ranked by
  the ranker, Recall@10) against popularity. (Its ranker's AUC on rated events is not checked:
  the cascade's ranker learns to order a list around its positive, not ratings, and measures
  below the item rate there.)

Every case must beat its floor by ``margin`` and land within ``band`` of the value recorded in
``benchmarks/quality_suite.toml`` (one file: a change that moves a number updates it in the same
commit and says why). Where a paper claims to beat BCE (Confidence Ranking, the welfare rankloss)
the BCE twin is a case of its own, so both numbers are recorded side by side.

    .venv/bin/python benchmarks/quality_suite.py             # the table (benchmarks/README.md)
    .venv/bin/python benchmarks/quality_suite.py --record    # rewrite the recorded values
    make test                                                # tests/quality: the same checks

Determinism: one torch thread and fixed seeds make a case repeat exactly on one machine (measured:
two runs, every number equal); the bands leave room for another CPU's float rounding and are set
from the spread of seeds 0-2 (recorded with the table).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankforge.benchmarks.machine import machine

REPO = Path(__file__).resolve().parent.parent
RECORDED = REPO / "benchmarks" / "quality_suite.toml"
MOVIELENS = REPO.parent / "shared" / "data" / "ml-latest-small"

#: Retrieval: leave-last-5-out on MovieLens latest-small, 256 shared uniform negatives, 8 epochs.
RETRIEVAL_BASE: dict[str, Any] = {
    "data": {
        "source": "movielens",
        "split": "leave_last_out",
        "n_test_per_user": 5,
        "positive_threshold": 4.0,
        "history_len": 30,
    },
    "model": {"embedding_dim": 64, "tower_sizes": [128, 64]},
    "optimizer": {"dense": "adam", "dense_lr": 1e-3, "sparse_lr": 0.05},
    "training": {"epochs": 8, "batch_size": 1024, "threads": 1},
    "negatives": {"count": 256, "distribution": "uniform", "shared": True},
}
#: Each retrieval objective as the suite trains it (the rest are the objectives' own defaults).
RETRIEVAL_OBJECTIVES: dict[str, dict[str, Any]] = {
    "sampled_softmax": {"temperature": 0.1},  # SL of the PSL paper: softmax over cosine / tau
    "ccl": {},  # its documented defaults
    "psl": {},
    "bpr": {},
}
#: Ranking: rating >= 4 is the click, every rated item an impression, a global time split.
RANKING_BASE: dict[str, Any] = {
    "data": {"source": "movielens", "split": "time", "positive_threshold": 4.0, "history_len": 20},
    "model": {"kind": "ranking", "embedding_dim": 16, "dense_sizes": [32], "over_sizes": [64, 1]},
    "optimizer": {"dense": "adamw", "dense_lr": 3e-3, "weight_decay": 1e-4, "sparse_lr": 0.05},
    "training": {"epochs": 2, "batch_size": 512, "threads": 1},
    "negatives": {"count": 0},
}
AUCTION_BASE: dict[str, Any] = {
    "data": {"synthetic": {"n_users": 300, "n_items": 400}},
    "model": {"kind": "auction", "embedding_dim": 16, "dense_sizes": [32], "over_sizes": [64, 1]},
    "optimizer": {"dense": "adam", "dense_lr": 3e-3, "sparse_lr": 0.05},
    "training": {"epochs": 8, "batch_size": 256, "threads": 1},
    # bids running against CTR, the setting where the paper's argument bites (benchmarks/README.md)
    "auctions": {"simulate": {"n_auctions": 20000, "ads_per_auction": 8, "bid_ctr_correlation": -0.5}},
}
CASCADE_BASE: dict[str, Any] = {
    "data": {**RETRIEVAL_BASE["data"], "history_len": 20},
    "model": {
        "kind": "cascade",
        "embedding_dim": 32,
        "tower_sizes": [64, 32],
        "dense_sizes": [32],
        "over_sizes": [64, 1],
    },
    "objective": {"name": "lcron", "params": {"temperature": 1.0}},  # tau chosen on validation
    "optimizer": {"dense": "adam", "dense_lr": 3e-3, "sparse_lr": 0.05},
    "training": {"epochs": 4, "batch_size": 512, "threads": 1},
    "negatives": {"count": 15, "distribution": "popularity", "uniform_share": 0.5},
}


@dataclass(frozen=True)
class Case:
    """One trained model and what it is held to: ``checks`` maps each checked metric (as
    ``training.validation.validate`` names it) to its floor (``popularity``, ``item_rate`` or
    ``ad_rate``). ``reference_of``: the case whose exported model is this one's
    ``objective.reference`` (a previous model)."""

    name: str
    config: dict[str, Any]
    checks: dict[str, str]
    reference_of: str | None = None
    needs_movielens: bool = True


def _merge(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def cases() -> list[Case]:
    """Every case, built from the registries: a retrieval case per (retrieval kind, retrieval
    objective), then the ranking, auction and cascade objectives."""
    from rankforge.training.model_kinds import MODEL_KINDS
    from rankforge.training.objectives import OBJECTIVES

    retrieval_objectives = [n for n, c in OBJECTIVES.items() if getattr(c, "kind", None) == "retrieval"]
    missing = sorted(set(retrieval_objectives) ^ set(RETRIEVAL_OBJECTIVES))
    if missing:
        raise ValueError(f"the quality suite has no settings for retrieval objective(s) {missing}")
    out = [
        Case(
            f"{kind}/{objective}",
            _merge(
                RETRIEVAL_BASE,
                model={"kind": kind},
                objective={"name": objective, "params": RETRIEVAL_OBJECTIVES[objective]},
            ),
            {"recall@20": "popularity"},
        )
        for kind, declared in MODEL_KINDS.items()
        if declared.trained and declared.retrieval
        for objective in retrieval_objectives
    ]
    out += [
        Case("ranking/bce", _merge(RANKING_BASE, objective={"name": "bce"}), {"auc": "item_rate"}),
        Case(
            "ranking/confidence_ranking",
            _merge(RANKING_BASE, objective={"name": "confidence_ranking"}),
            {"auc": "item_rate"},
            reference_of="ranking/bce",
        ),
        Case(
            "auction/bce",
            _merge(AUCTION_BASE, objective={"name": "bce"}),
            {"welfare_ratio": "ad_rate"},
            needs_movielens=False,
        ),
        Case(
            "auction/welfare_rankloss",
            _merge(AUCTION_BASE, objective={"name": "welfare_rankloss"}),
            {"welfare_ratio": "ad_rate"},
            needs_movielens=False,
        ),
        Case(
            "cascade/lcron",
            copy.deepcopy(CASCADE_BASE),
            {"retrieval_recall@20": "popularity", "end_to_end_recall@10": "popularity"},
        ),
    ]
    return out


@dataclass
class Outcome:
    """A trained case: each checked metric's value and its floor's, and the wall seconds."""

    case: Case
    values: dict[str, float]
    floors: dict[str, float]
    seconds: float
    bundle: Path | None = None  # the exported model, when another case reads it


@dataclass(frozen=True)
class Recorded:
    """What one check is held to (``benchmarks/quality_suite.toml``)."""

    value: float
    band: float  # |measured - value| <= band
    margin: float  # measured - floor >= margin (for these metrics higher is better)

    def problems(self, name: str, measured: float, floor: float) -> list[str]:
        """Why ``measured`` fails this record (empty: it passes)."""
        found = []
        if measured - floor < self.margin:
            found.append(f"{name} = {measured:.4f} does not beat its floor {floor:.4f} by {self.margin:.4f}")
        if abs(measured - self.value) > self.band:
            direction = "above" if measured > self.value else "below"
            found.append(
                f"{name} = {measured:.4f} is {direction} its recorded {self.value:.4f} by more than "
                f"{self.band:.4f}: a change moved it (update benchmarks/quality_suite.toml with the reason "
                "if it is meant)"
            )
        return found


def load_recorded(path: Path = RECORDED) -> dict[str, dict[str, Recorded]]:
    """``{case: {metric: Recorded}}`` from the checked-in file."""
    raw = tomllib.loads(path.read_text())
    return {
        case: {metric: Recorded(**values) for metric, values in metrics.items()}
        for case, metrics in raw.get("cases", {}).items()
    }


def require_movielens() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        raise FileNotFoundError(
            f"the quality suite reads MovieLens latest-small from {MOVIELENS}: not found "
            "(../shared/data/ml-latest-small, see ../shared/README.md)"
        )
    return MOVIELENS


class Suite:
    """Runs cases in this process, preparing each data config once and keeping the exported
    models other cases name as their reference. ``workdir`` holds checkpoints and bundles."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._prepared: dict[str, Any] = {}
        self.outcomes: dict[str, Outcome] = {}

    def config(self, case: Case, seed: int = 0) -> Any:
        from rankforge.training.config import parse_config

        raw = copy.deepcopy(case.config)
        if case.needs_movielens:
            raw["data"]["path"] = str(require_movielens())
        if case.reference_of is not None:
            reference = self.run(_case(case.reference_of), seed).bundle
            raw["objective"]["reference"] = str(reference)
        raw |= {
            "seed": seed,
            "output_dir": str(self.workdir / case.name.replace("/", "_") / f"seed{seed}"),
            "mlflow": {"register_model": False},
            "checkpoint": {"resume": False, "every": 1000},
        }
        return parse_config(raw)

    def _data(self, config: Any) -> Any:
        from rankforge.features.pipeline import prepare
        from rankforge.pipelines.auction_data import with_auctions

        key = config.data.model_dump_json() + (config.auctions.model_dump_json() if config.auctions else "")
        if key not in self._prepared:
            data = prepare(config.data)
            if config.auctions is not None:
                data = with_auctions(data, config.auctions, config.data)
            self._prepared[key] = data
        return self._prepared[key]

    def run(self, case: Case, seed: int = 0) -> Outcome:
        """Train ``case`` (once per seed) and score its checks and their floors on the test split."""
        key = f"{case.name}#{seed}"
        if key in self.outcomes:
            return self.outcomes[key]
        import torch

        from rankforge.bundles.export import build_ranker_bundle
        from rankforge.training.sharding import init_distributed, shutdown_distributed
        from rankforge.training.trainer import Trainer
        from rankforge.training.validation import validate

        config = self.config(case, seed)
        data = self._data(config)
        started = time.monotonic()
        torch.set_num_threads(config.training.threads or 1)
        env = init_distributed()
        try:
            trainer = Trainer(config, data, env)
            trainer.start(resume=False)
            trainer.fit()
            model = trainer.selected_model()
        finally:
            shutdown_distributed(env)
        assert model is not None
        metrics = validate(model, data, trainer.tables, split="test")
        floors = {
            metric: FLOORS[floor](data, trainer.tables, metric) for metric, floor in case.checks.items()
        }
        bundle = None
        if any(c.reference_of == case.name for c in cases()):
            bundle = config.output_dir / "bundle"
            bundle.mkdir(parents=True, exist_ok=True)
            build_ranker_bundle(model, data, str(bundle))
        outcome = Outcome(
            case,
            {metric: float(metrics[metric]) for metric in case.checks},
            floors,
            time.monotonic() - started,
            bundle,
        )
        self.outcomes[key] = outcome
        return outcome


def _case(name: str) -> Case:
    for case in cases():
        if case.name == name:
            return case
    raise KeyError(f"no quality case {name!r}")


def _popularity(data: Any, tables: Any, metric: str) -> float:
    """Most popular unseen items (training events), scored like any retrieval model (for a
    cascade's stage or funnel metric, the same metric of popularity alone)."""
    from rankforge.models.popularity import MostPopular
    from rankforge.training.validation import retrieval_validation

    name = metric.removeprefix("retrieval_").removeprefix("end_to_end_")
    k = int(name.split("@")[1])
    return retrieval_validation(MostPopular(tables.item_events), data, tables, "test", ks=(k,))[name]


def _item_rate(data: Any, tables: Any, metric: str) -> float:
    """Each test event scored by its item's smoothed positive rate in training (the floor
    ``rankforge promote`` holds a ranker to)."""
    from rankforge.evaluation.metrics import ranking_metrics
    from rankforge.pipelines.bundle_scoring import item_rate_probabilities

    test = data.test_events
    labels = test["label"].to_numpy().astype(float)
    return ranking_metrics(labels, item_rate_probabilities(data, test))[metric.removeprefix("ranker_")]


def _ad_rate(data: Any, tables: Any, metric: str) -> float:
    """The test auctions run on each ad's smoothed click rate in the training auctions,
    ``(clicks + 1) / (shows + 2)`` (as ``item_pos_rate`` smooths an item's)."""
    import numpy as np

    from rankforge.evaluation.auction_metrics import auction_metrics

    train, test = data.auctions.train, data.auctions.split("test")
    shown = train.mask.numpy()
    ads = train.ads.numpy()[shown]
    clicks = np.bincount(ads, weights=train.clicks.numpy()[shown], minlength=data.n_items)
    shows = np.bincount(ads, minlength=data.n_items)
    rate = (clicks + 1.0) / (shows + 2.0)
    pctr = rate[test.filled_ads().numpy()]
    return auction_metrics(pctr, **test.outcome_inputs())[metric]


FLOORS: dict[str, Callable[[Any, Any, str], float]] = {
    "popularity": _popularity,
    "item_rate": _item_rate,
    "ad_rate": _ad_rate,
}


@dataclass
class Table:
    rows: list[tuple[str, str, float, float, Recorded | None]] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            "| case | metric | measured | floor | over floor | recorded ± band | margin |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, metric, value, floor, rec in self.rows:
            recorded = f"{rec.value:.4f} ± {rec.band:.4f}" if rec else "-"
            margin = f"{rec.margin:.4f}" if rec else "-"
            cells = [name, metric, f"{value:.4f}", f"{floor:.4f}", f"{value - floor:+.4f}", recorded, margin]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0], help="seeds (the suite records seed 0)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "quality_suite")
    parser.add_argument("--record", action="store_true", help="rewrite the recorded values from seed 0")
    args = parser.parse_args(argv)
    from rankforge.quiet import quiet_third_party

    quiet_third_party()
    recorded = load_recorded() if RECORDED.is_file() else {}
    chosen = [c for c in cases() if not args.cases or c.name in args.cases]
    suite = Suite(args.workdir)
    per_seed: dict[tuple[str, str], list[float]] = {}
    table = Table()
    started = time.monotonic()
    for seed in args.seeds:
        for case in chosen:
            outcome = suite.run(case, seed)
            for metric, value in outcome.values.items():
                per_seed.setdefault((case.name, metric), []).append(value)
                if seed == args.seeds[0]:
                    rec = recorded.get(case.name, {}).get(metric)
                    table.rows.append((case.name, metric, value, outcome.floors[metric], rec))
            took = f"{outcome.seconds:.1f} s"
            print(
                f"{case.name} seed {seed}: {outcome.values} floors {outcome.floors} ({took})", file=sys.stderr
            )
    print(
        f"Quality suite, {dt.date.today()}, {machine()}, torch threads 1, seeds {args.seeds}, "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print(table.render())
    if len(args.seeds) > 1:
        print("\n| case | metric | per seed |\n| --- | --- | --- |")
        for (name, metric), values in per_seed.items():
            print(f"| {name} | {metric} | {', '.join(f'{v:.4f}' for v in values)} |")
    if args.record:
        write_recorded(table, per_seed, recorded)
    return 0


def write_recorded(
    table: Table, per_seed: dict[tuple[str, str], list[float]], previous: dict[str, dict[str, Recorded]]
) -> None:
    """Rewrite the recorded values from the first seed's measurements. With several seeds each
    band is 1.25 x their spread (at least ``MIN_BAND``), rounded up to 0.005; with one, the band
    stays as recorded (``MIN_BAND`` for a new check). Margins stay as recorded (``MARGINS`` for
    a new check)."""
    lines = [
        "# The quality suite's recorded values (benchmarks/quality_suite.py; make test runs tests/quality).",
        "# A change that moves a number updates it here in the same commit and says why in the message.",
        "# value: the first seed's measurement (one torch thread: it repeats exactly on one machine);",
        f"# band: |measured - value| allowed, 1.25 x the seeds' spread (at least {MIN_BAND}), rounded up;",
        "# margin: measured - floor required (floors: benchmarks/quality_suite.py FLOORS).",
        f"# Recorded {dt.date.today()}, {machine()}.",
        "",
    ]
    for name, metric, value, _floor, _ in table.rows:
        old = previous.get(name, {}).get(metric)
        seeds = per_seed.get((name, metric), [value])
        if len(seeds) > 1:
            band = max(MIN_BAND, math.ceil(round(1.25 * (max(seeds) - min(seeds)) / 0.005, 6)) * 0.005)
        else:
            band = old.band if old else MIN_BAND
        margin = old.margin if old else MARGINS[metric.removeprefix("retrieval_").split("@")[0]]
        lines += [
            f'[cases."{name}"."{metric}"]  # seeds: {", ".join(f"{v:.4f}" for v in seeds)}',
            f"value = {value:.4f}",
            f"band = {band:.3f}",
            f"margin = {margin}",
            "",
        ]
    RECORDED.write_text("\n".join(lines))


MIN_BAND = 0.015
#: A new check's margin over its floor, by metric family.
MARGINS = {"recall": 0.01, "end_to_end_recall": 0.01, "auc": 0.05, "welfare_ratio": 0.05}


if __name__ == "__main__":
    sys.exit(main())
