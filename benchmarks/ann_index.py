"""ANN retrieval at catalogue scale: build time, memory, single-query p50/p99 and recall@100 of
exact search, FAISS HNSW, FAISS IVF and ScaNN, on trained-like (clustered) and random item vectors, or
on a catalogue drawn from a mixture fitted to a trained model's vectors (``--vectors fitted
--fit-from BUNDLE``; its dimension is the bundle's) (with ``--ivfpq-nprobe``, also IVF-PQ
fast-scan with exact re-ranking, a candidate not served).

    .venv/bin/python benchmarks/ann_index.py [--sizes 100000 1000000 5000000] [--dim 64]

Build uses every core, once per index structure (each --hnsw-ef / --ivf-nprobe is a row of the same
build); queries run one at a time on one thread (a request thread of the server).
HNSW is skipped above --hnsw-max items (its build is the slow one on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from rankforge.bundles.ann_index import AnnIndex, IndexConfig, RecallProbe, build, set_search
from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.candidate_index import ExactInnerProductIndex
from rankforge.bundles.scann_index import ScannIndex
from rankforge.errors import DataError
from rankforge.models.scoring import Scoring


def vectors(n: int, d: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.normal(size=(n, d)).astype(np.float32)
    else:  # trained-like: items gather around many tastes, popular directions are denser
        centers = rng.normal(size=(1000, d)).astype(np.float32)
        weights = rng.zipf(1.5, size=1000).astype(np.float64)
        x = centers[rng.choice(1000, size=n, p=weights / weights.sum())]
        x += 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # a cosine model's scoring space
    return x


def fitted_vectors(
    n: int, source: np.ndarray, scoring: Scoring, clusters: int = 256, seed: int = 0
) -> np.ndarray:
    """``n`` vectors ``[n, d]`` drawn from a Gaussian mixture fitted to ``source`` ``[m, d]`` (a
    trained model's item vectors): FAISS k-means cells of ``source``, each a Gaussian with its
    members' mean and covariance, drawn in proportion to its size. A catalogue of any size with
    the trained set's clusters, their sizes and their shapes (the directions items spread along
    inside a cluster are what makes recall@100 costly). A cell's covariance is shrunk towards its
    diagonal by ``d / members`` (a few dozen members do not determine 64 x 64 entries). Rows are
    put in the source model's ``scoring`` space (``Scoring.candidate``: unit rows for cosine)."""
    x = np.ascontiguousarray(source, dtype=np.float32)
    d = x.shape[1]
    kmeans = faiss.Kmeans(d, clusters, niter=20, seed=seed, spherical=False)
    kmeans.train(x)
    _, cell = kmeans.index.search(x, 1)
    cell = cell[:, 0]
    rng = np.random.default_rng(seed)
    counts = np.bincount(cell, minlength=clusters)
    drawn = rng.choice(clusters, size=n, p=counts / counts.sum())
    out = np.empty((n, d), dtype=np.float32)
    for c in np.flatnonzero(counts):
        members = x[cell == c].astype(np.float64)
        rows = np.flatnonzero(drawn == c)
        mean = members.mean(0)
        cov = np.cov(members, rowvar=False) if len(members) > 1 else np.zeros((d, d))
        shrink = min(1.0, d / len(members))
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-9 * np.eye(d)
        out[rows] = rng.multivariate_normal(mean, cov, size=len(rows), method="eigh")
    return scoring.candidate(torch.from_numpy(out)).numpy()


def catalogue(n: int, d: int, kind: str, fit_from: Path | None = None) -> np.ndarray:
    """``n`` item vectors ``[n, d]`` of ``kind``: "clustered" or "random" (``vectors``), or
    "fitted" (``fitted_vectors`` of the retrieval bundle ``fit_from``'s item vectors, in its
    scoring space; their dimension is kept)."""
    if kind != "fitted":
        return vectors(n, d, kind)
    if fit_from is None:
        raise SystemExit("vectors 'fitted' need --fit-from BUNDLE_DIR (a retrieval bundle)")
    try:
        bundle = load_bundle(fit_from, expect="retrieval")
    except DataError as exc:
        raise SystemExit(f"--fit-from: {str(exc)[:160]}") from exc
    return fitted_vectors(n, np.load(bundle.path("item_embeddings.npy")), bundle.scoring or Scoring())


def index_mb(index: faiss.Index | ScannIndex) -> float:
    """What the index occupies serialized, MiB (ScaNN's directory: its float vectors included)."""
    if not isinstance(index, ScannIndex):
        return faiss.serialize_index(index).nbytes / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp))
        return sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20


def latency(search, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :], k)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def row(
    n: int, kind: str, index: str, seconds: float, mb: float, p50: float, p99: float, recall: float
) -> None:
    cells = f"{n:>9} {kind:>9} {index:>8} {seconds:>8.1f} {mb:>9.0f} {p50:>7.2f} {p99:>7.2f} {recall:>10.4f}"
    print(cells, flush=True)


def ivf_pq(
    x: np.ndarray,
    queries: np.ndarray,
    probe: RecallProbe,
    nprobes: list[int],
    refines: list[int],
    n: int,
    kind: str,
) -> None:
    """Rows for FAISS ``IVF{lists},PQ{d/2}x4fs,RFlat`` (4-bit fast-scan codes, the candidates
    re-ranked exactly): built once, searched at every (nprobe, re-ranked per k) pair."""
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    lists = max(1, min(n // 39, int(4 * np.sqrt(n))))
    index = faiss.index_factory(
        x.shape[1], f"IVF{lists},PQ{x.shape[1] // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT
    )
    sample = x[np.random.default_rng(0).choice(n, min(n, 200_000), replace=False)]
    index.train(sample)
    index.add(x)
    seconds = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    size_mb = faiss.serialize_index(index).nbytes / 2**20
    ivf, refine = faiss.extract_index_ivf(index), faiss.downcast_index(index)
    for nprobe in nprobes:
        for k_factor in refines:
            ivf.nprobe, refine.k_factor = nprobe, k_factor

            def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
                return index.search(np.ascontiguousarray(q, dtype=np.float32), k)

            p50, p99 = latency(search, queries, 100)
            row(n, kind, f"pq/{nprobe}x{k_factor}", seconds, size_mb, p50, p99, probe.recall(index))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--hnsw-max", type=int, default=1_000_000)
    parser.add_argument("--hnsw-ef", type=int, nargs="*", default=[256], help="HNSW efSearch values")
    parser.add_argument("--ivf-nprobe", type=int, nargs="*", default=[32, 128], help="IVF nprobe values")
    parser.add_argument(
        "--ivf-codes",
        nargs="+",
        choices=["flat", "sq8"],
        default=["flat"],
        help="what IVF cells hold (sq8: 8-bit codes re-scored exactly; rows named ivf8/NPROBE)",
    )
    parser.add_argument(
        "--scann-nprobe",
        type=int,
        nargs="*",
        default=[],
        help="ScaNN leaves searched per query (rows scann/N; default leaves and scann_reorder)",
    )
    parser.add_argument(
        "--vectors", nargs="+", choices=["clustered", "random", "fitted"], default=["clustered", "random"]
    )
    parser.add_argument(
        "--fit-from", type=Path, help="a trained retrieval bundle: the source of the 'fitted' vectors"
    )
    parser.add_argument(
        "--ivfpq-nprobe",
        type=int,
        nargs="*",
        default=[],
        help="also FAISS IVF-PQ fast-scan with exact re-ranking (not a served kind): nprobe values",
    )
    parser.add_argument(
        "--ivfpq-refine", type=int, nargs="*", default=[4, 10, 20], help="IVF-PQ re-ranked candidates per k"
    )
    args = parser.parse_args()
    print(
        f"{dt.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"faiss {faiss.__version__}, dim {args.dim}, {args.queries} single queries (1 thread), k = 100"
    )
    header = ("items", "vectors", "index", "build s", "index MB", "p50 ms", "p99 ms", "recall@100")
    print("{:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7} {:>10}".format(*header))
    for n in args.sizes:
        for kind in args.vectors:
            x = catalogue(n, args.dim, kind, args.fit_from)
            rng = np.random.default_rng(1)
            noise = 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
            queries = x[rng.choice(n, args.queries, replace=False)] + noise
            exact = ExactInnerProductIndex(x)
            truth = np.concatenate([exact.search(queries[i : i + 20], 100)[0] for i in range(0, 200, 20)])
            probe = RecallProbe(queries[:200], truth)  # recall@100 as the export measures it
            faiss.omp_set_num_threads(1)
            p50, p99 = latency(exact.search, queries[:100], 100)
            row(n, kind, "exact", 0.0, x.nbytes / 2**20, p50, p99, 1.0)
            # one build per structure; its search knob (efSearch / nprobe) set for each row
            builds = [(IndexConfig(kind="ivf", ivf_codes=codes), args.ivf_nprobe) for codes in args.ivf_codes]
            builds.append((IndexConfig(kind="scann"), args.scann_nprobe))
            if n <= args.hnsw_max:
                builds.insert(0, (IndexConfig(kind="hnsw", hnsw_m=32), args.hnsw_ef))
            for config, knobs in builds:
                if not knobs:
                    continue
                faiss.omp_set_num_threads(2)
                start = time.perf_counter()
                index = build(x, config)
                seconds = time.perf_counter() - start
                faiss.omp_set_num_threads(1)
                served = AnnIndex(index, exact)
                size_mb = index_mb(index)
                prefix = {"hnsw": "hnsw", "scann": "scann"}.get(config.kind) or (
                    "ivf8" if config.ivf_codes == "sq8" else "ivf"
                )
                for knob in knobs:
                    set_search(index, config.kind, knob)
                    p50, p99 = latency(served.search, queries, 100)
                    row(n, kind, f"{prefix}/{knob}", seconds, size_mb, p50, p99, probe.recall(index))
                del index, served
            if args.ivfpq_nprobe:
                ivf_pq(x, queries, probe, args.ivfpq_nprobe, args.ivfpq_refine, n, kind)
            del x, exact
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
