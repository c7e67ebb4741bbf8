"""ANN retrieval at catalogue scale: build time, memory, single-query p50/p99 and recall@100 of
exact search, FAISS HNSW and FAISS IVF, on trained-like (clustered) and random item vectors
(with ``--ivfpq-nprobe``, also IVF-PQ fast-scan with exact re-ranking, a candidate not served).

    .venv/bin/python benchmarks/ann_index.py [--sizes 100000 1000000 5000000] [--dim 64]

Build uses every core; queries run one at a time on one thread (a request thread of the server).
HNSW is skipped above --hnsw-max items (its build is the slow one on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time

import faiss
import numpy as np

from rankforge.bundles.ann_index import AnnIndex, IndexConfig, build
from rankforge.bundles.candidate_index import ExactInnerProductIndex


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
    truth: np.ndarray,
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
            _, found = search(queries[:200], 100)
            recall = np.mean([len(np.intersect1d(t, f)) / 100 for t, f in zip(truth, found, strict=True)])
            row(n, kind, f"pq/{nprobe}x{k_factor}", seconds, size_mb, p50, p99, float(recall))


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
    parser.add_argument("--vectors", nargs="+", default=["clustered", "random"])
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
            x = vectors(n, args.dim, kind)
            rng = np.random.default_rng(1)
            noise = 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
            queries = x[rng.choice(n, args.queries, replace=False)] + noise
            exact = ExactInnerProductIndex(x)
            truth = np.concatenate([exact.search(queries[i : i + 20], 100)[0] for i in range(0, 200, 20)])
            faiss.omp_set_num_threads(1)
            p50, p99 = latency(exact.search, queries[:100], 100)
            row(n, kind, "exact", 0.0, x.nbytes / 2**20, p50, p99, 1.0)
            configs = [
                IndexConfig(kind="ivf", nprobe=nprobe, ivf_codes=codes)
                for codes in args.ivf_codes
                for nprobe in args.ivf_nprobe
            ]
            if n <= args.hnsw_max:
                configs = [IndexConfig(kind="hnsw", hnsw_m=32, ef_search=ef) for ef in args.hnsw_ef] + configs
            for config in configs:
                faiss.omp_set_num_threads(2)
                start = time.perf_counter()
                index = build(x, config)
                seconds = time.perf_counter() - start
                faiss.omp_set_num_threads(1)
                served = AnnIndex(index, exact)
                p50, p99 = latency(served.search, queries, 100)
                found, _ = served.search(queries[:200], 100)
                recall = np.mean([len(np.intersect1d(t, f)) / 100 for t, f in zip(truth, found, strict=True)])
                size_mb = faiss.serialize_index(index).nbytes / 2**20
                name = f"hnsw/{config.ef_search}" if config.kind == "hnsw" else f"ivf/{config.nprobe}"
                name = name.replace("ivf/", "ivf8/") if config.ivf_codes == "sq8" else name
                row(n, kind, name, seconds, size_mb, p50, p99, float(recall))
                del index, served
            if args.ivfpq_nprobe:
                ivf_pq(x, queries, truth, args.ivfpq_nprobe, args.ivfpq_refine, n, kind)
            del x, exact
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
