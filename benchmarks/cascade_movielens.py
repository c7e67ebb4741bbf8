"""Is a retrieval -> rank cascade better trained as one network (LCRON) than stage by stage?

On a real log, the same two-stage cascade (two-tower retrieval keeping its top ``k1`` of the whole
catalogue, a DLRM ranker keeping the top ``k2`` of those) is trained two ways:

    independent  the two-tower with sampled softmax and the ranker with BCE, each its own job
    lcron        the cascade model trained jointly with LCRON (the authors' defaults, and the
                 NeuralSort temperature chosen on the validation split)

Training lists are built as in the LCRON paper from pools of different difficulty: each ground
truth item with negatives from a popular pool (what survives a first stage) and from the whole
catalogue (what a first stage rejects) -- ``negatives.distribution = "popularity"`` with
``uniform_share = 0.5``; the independent stages draw their negatives the same way.

Both are scored as served, from their exported bundles: for every test user the retrieval bundle
ranks all items (known ones removed), the ranker bundle re-scores the top ``k1`` and keeps ``k2``;
end-to-end Recall@k2 is the share of the user's held-out positives that come out of both stages.
Paired bootstrap intervals over users compare the two, averaged over seeds.

    .venv/bin/python benchmarks/cascade_movielens.py [--seeds 0 1 2] [--epochs 6]

Prints the tables recorded in ``benchmarks/README.md``. Run it alone: one torch thread per job,
jobs one after another.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from rankforge.benchmarks.machine import machine
from rankforge.bundles.bundle import Bundle, load_bundle
from rankforge.errors import DataError
from rankforge.evaluation.bootstrap import Interval, paired_bootstrap_mean_difference
from rankforge.features.pipeline import PreparedData, prepare
from rankforge.pipelines.bundle_scoring import BundleIds, ranker_probabilities, score_retrieval
from rankforge.training.config import TrainConfig, parse_config


@dataclass(frozen=True)
class CascadeRecall:
    users: np.ndarray  # raw ids of the evaluated users (at least one held-out positive)
    end_to_end: np.ndarray  # per user: Recall@k2 through both stages
    retrieval: np.ndarray  # per user: Recall@k1 of the retrieval stage alone


def cascade_recall(retrieval: Bundle, ranker: Bundle, data: PreparedData, k1: int, k2: int) -> CascadeRecall:
    """Per-user recall of the served cascade: retrieval's top ``k1`` (known items removed), then
    the ranker's top ``k2`` of those, both bundles fed exactly as the server feeds them."""
    if not 0 < k2 <= k1:
        raise ValueError(f"need 0 < k2 <= k1, got k1={k1}, k2={k2}")
    scored = score_retrieval(retrieval, data)
    rows = np.flatnonzero(np.diff(scored.relevant.indptr) > 0)
    raw_items = BundleIds.of(retrieval).items.decode(np.arange(len(BundleIds.of(retrieval).items)))
    data_item = (
        pl.DataFrame({"item_id": raw_items})
        .join(data.mapping.items, on="item_id", how="left", maintain_order="left")["item_idx"]
        .to_numpy()
    )
    data_user = (
        pl.DataFrame({"user_id": scored.users})
        .join(data.mapping.users, on="user_id", how="left", maintain_order="left")["user_idx"]
        .to_numpy()
    )
    end_to_end, first_stage = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        scores = scored.scores(torch.from_numpy(chunk))
        known = torch.from_numpy(scored.exclude[chunk].toarray())
        top = torch.topk(scores.masked_fill(known, float("-inf")), k1, dim=1).indices.numpy()
        relevant = scored.relevant[chunk].toarray()
        n_relevant = relevant.sum(axis=1)
        hits_first = np.take_along_axis(relevant, top, axis=1)
        pairs = pl.DataFrame(
            {"user_idx": np.repeat(data_user[chunk], k1), "item_idx": data_item[top.reshape(-1)]}
        )
        probs = ranker_probabilities(ranker, pairs, data).reshape(len(chunk), k1)
        kept = np.argsort(-probs, axis=1, kind="stable")[:, :k2]
        end_to_end.append(np.take_along_axis(hits_first, kept, axis=1).sum(axis=1) / n_relevant)
        first_stage.append(hits_first.sum(axis=1) / n_relevant)
    return CascadeRecall(scored.users[rows], np.concatenate(end_to_end), np.concatenate(first_stage))


def _data(path: Path) -> dict[str, object]:
    return {
        "source": "movielens",
        "path": str(path),
        "split": "leave_last_out",
        "n_test_per_user": 5,
        "validation_fraction": 0.05,
        "positive_threshold": 4.0,
        "history_len": 20,
    }


def configs(data: Path, out: Path, seed: int, epochs: int, negatives: int) -> dict[str, TrainConfig]:
    """The three jobs of one seed: the independent retrieval and ranker, and the LCRON cascade."""
    model = {"embedding_dim": 32, "tower_sizes": [64, 32], "dense_sizes": [32], "over_sizes": [64, 1]}
    sample = {"count": negatives, "distribution": "popularity", "uniform_share": 0.5}
    training = {"epochs": epochs, "batch_size": 512, "patience": 2, "threads": 1}
    mlflow = {"experiment": "rankforge-cascade-benchmark", "register_model": False}

    def job(name: str, kind: str, objective: dict[str, object], negatives: dict[str, object]) -> TrainConfig:
        return parse_config(
            {
                "seed": seed,
                "output_dir": str(out / f"s{seed}" / name),
                "data": _data(data),
                "model": {"kind": kind, **model},
                "objective": objective,
                "optimizer": {"dense": "adam", "dense_lr": 0.003, "sparse_lr": 0.05},
                "training": training,
                "negatives": negatives,
                "mlflow": mlflow,
            }
        )

    jobs = {
        "retrieval": job(
            "retrieval", "retrieval", {"name": "sampled_softmax", "params": {"temperature": 0.1}}, sample
        ),
        "ranker": job("ranker", "ranking", {"name": "bce"}, {**sample, "count": 8}),
    }
    for name, params in LCRON_VARIANTS.items():
        jobs[name] = job(name, "cascade", {"name": "lcron", "params": params}, sample)
    return jobs


#: The LCRON runs: the authors' defaults, and the NeuralSort temperature chosen on the validation
#: split (retrieval Recall@20 on seed 0: tau 50 -> 0.090 at epoch 1, tau 1 -> 0.126, tau 0.1 -> 0.126;
#: tau 50 is nearly uniform over a 16-item list at this score scale, so it barely trains).
LCRON_VARIANTS: dict[str, dict[str, object]] = {"lcron": {}, "lcron_tau1": {"temperature": 1.0}}
LABELS = {
    "independent": "stages independently (sampled softmax + BCE)",
    "lcron": "one network, LCRON (authors' defaults, tau 50)",
    "lcron_tau1": "one network, LCRON (tau 1, chosen on validation)",
}


@dataclass(frozen=True)
class SeedResult:
    seed: int
    recalls: dict[str, CascadeRecall]  # "independent" and every LCRON variant
    minutes: dict[str, float]


def run_seed(
    data_dir: Path, out: Path, seed: int, epochs: int, negatives: int, k1: int, k2: int
) -> SeedResult:
    from rankforge.pipelines.train import run_training

    os.environ.setdefault("TQDM_DISABLE", "1")
    jobs = configs(data_dir, out, seed, epochs, negatives)
    bundles, minutes = {}, {}
    for name, config in jobs.items():
        started = time.monotonic()
        bundles[name] = run_training(config).bundle_dir
        minutes[name] = (time.monotonic() - started) / 60
    data = prepare(jobs["retrieval"].data)
    recalls = {
        "independent": cascade_recall(
            load_bundle(bundles["retrieval"]), load_bundle(bundles["ranker"]), data, k1, k2
        )
    }
    for name in LCRON_VARIANTS:
        stages = bundles[name]
        recalls[name] = cascade_recall(
            load_bundle(stages / "bundle_retrieval"), load_bundle(stages / "bundle_ranker"), data, k1, k2
        )
    minutes["independent"] = minutes.pop("retrieval") + minutes.pop("ranker")
    return SeedResult(seed, recalls, minutes)


def report(results: list[SeedResult], k1: int, k2: int, epochs: int, negatives: int, n_resamples: int) -> str:
    users = results[0].recalls["independent"].users
    if any(not np.array_equal(c.users, users) for r in results for c in r.recalls.values()):
        raise DataError("seeds or models evaluated different users")

    def mean(attr: str, which: str) -> np.ndarray:
        return np.mean([getattr(r.recalls[which], attr) for r in results], axis=0)

    lines = [
        "MovieLens latest-small (rating >= 4, last 5 events per user held out), "
        f"{dt.date.today().isoformat()}, "
        f"{machine()}, torch threads 1, seeds {[r.seed for r in results]}, {epochs} epochs max, "
        f"lists of 1 + {negatives} (half popular, half uniform); cascade k1 = {k1} of the catalogue, "
        f"k2 = {k2}; {users.size} test users",
        "",
        f"| training | retrieval Recall@{k1} | end-to-end Recall@{k2} | per seed (end-to-end) "
        "| minutes per seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for which, label in LABELS.items():
        per_seed = ", ".join(f"{r.recalls[which].end_to_end.mean():.4f}" for r in results)
        minutes = np.mean([r.minutes[which] for r in results])
        lines.append(
            f"| {label} | {mean('retrieval', which).mean():.4f} | {mean('end_to_end', which).mean():.4f} "
            f"| {per_seed} | {minutes:.1f} |"
        )
    lines += [
        "",
        "| difference (seed mean) | metric | estimate | 95% paired bootstrap over users |",
        "| --- | --- | --- | --- |",
    ]
    for variant in LCRON_VARIANTS:
        for attr, metric in (
            ("end_to_end", f"end-to-end Recall@{k2}"),
            ("retrieval", f"retrieval Recall@{k1}"),
        ):
            iv: Interval = paired_bootstrap_mean_difference(
                mean(attr, variant), mean(attr, "independent"), n_resamples
            )
            note = " (excludes 0)" if iv.excludes_zero() else ""
            lines.append(
                f"| {variant} − independent | {metric} | {iv.estimate:+.4f} "
                f"| [{iv.low:+.4f}, {iv.high:+.4f}]{note} |"
            )
    return "\n".join(lines)


def run_benchmark(
    data_dir: Path,
    out: Path,
    seeds: list[int],
    epochs: int = 6,
    negatives: int = 15,
    k1: int = 100,
    k2: int = 10,
    n_resamples: int = 1000,
) -> str:
    if not (data_dir / "ratings.csv").is_file():
        raise DataError(f"benchmark data not found: {data_dir / 'ratings.csv'} (see ../shared/README.md)")
    results = [run_seed(data_dir, out, seed, epochs, negatives, k1, k2) for seed in seeds]
    text = report(results, k1, k2, epochs, negatives, n_resamples)
    out.mkdir(parents=True, exist_ok=True)
    summary = [
        {
            "seed": r.seed,
            "minutes": r.minutes,
            **{name: float(recall.end_to_end.mean()) for name, recall in r.recalls.items()},
        }
        for r in results
    ]
    (out / "cascade.json").write_text(json.dumps(summary, indent=2))
    return text


ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ml-latest-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--negatives", type=int, default=15)
    parser.add_argument("--k1", type=int, default=100)
    parser.add_argument("--k2", type=int, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "runs/benchmarks/cascade")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # a table per run, not a progress bar per batch
    torch.set_num_threads(1)
    print(run_benchmark(args.data, args.output, args.seeds, args.epochs, args.negatives, args.k1, args.k2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
