"""How hard a trained model's item vectors are for an IVF index, beside ``ann_index.py``'s
generated vectors of the same size: recall@100 against exact search per ``nprobe``.

    .venv/bin/python benchmarks/ann_trained_vectors.py BUNDLE_DIR [--nprobe 4 8 16 ...]

``BUNDLE_DIR`` is an exported retrieval bundle (its ``item_embeddings.npy``, the vectors the
index is built over, in the model's scoring space). The generated sets are ``ann_index.py``'s
"clustered" (its stand-in for trained vectors) and "random" directions, with the trained set's
count and dimension, and "fitted": a sample of the same size from a Gaussian mixture fitted to
the trained vectors (``fitted_vectors``, the generator ``ann_index.py --fit-from`` draws a
catalogue of any size from); where its row matches the trained one, its larger catalogues stand
for trained ones. Each row also gives the share of variance in the top principal components
and the largest IVF cell against the mean one: a catalogue whose items crowd into few
directions is what makes recall@100 expensive. Queries are 1,000 sampled item vectors
(``RecallProbe``, as the export measures); p50 of 200 of them searched one at a time, one
thread. For a matrix-factorisation bundle the trained set also gets a row with 1,000 of the
model's own user vectors as the queries: whether item vectors stand for what is served.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import faiss
import numpy as np

from rankforge.benchmarks.ann_index import fitted_vectors, vectors
from rankforge.benchmarks.machine import machine
from rankforge.bundles.ann_index import IndexConfig, RecallProbe, build, set_search
from rankforge.bundles.bundle import Bundle, load_bundle
from rankforge.bundles.candidate_index import ExactInnerProductIndex
from rankforge.bundles.runtime import open_session
from rankforge.features.feature_spec import USER_ID
from rankforge.models.scoring import Scoring


def spectrum(x: np.ndarray, tops: tuple[int, ...]) -> list[float]:
    """Share of the variance in the top ``tops`` principal components."""
    ev = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    return [float(ev[:t].sum() / ev.sum()) for t in tops]


def user_queries(bundle: Bundle, n: int, seed: int = 5) -> np.ndarray | None:
    """``n`` sampled users' query vectors ``[n, d]`` from the bundle's user tower, when the tower
    reads the user id alone (matrix factorisation); None for a tower that reads more."""
    manifest = bundle.manifest
    if manifest.inputs["user_tower.onnx"] != [USER_ID]:
        return None
    session = open_session(str(bundle.path("user_tower.onnx")), 1)
    users = np.random.default_rng(seed).choice(manifest.n_users, min(n, manifest.n_users), replace=False)
    return session.run(None, {USER_ID: users.astype(np.int64).reshape(-1, 1)})[0].astype(np.float32)


def single_query_p50_ms(index: faiss.Index, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None, :], 100)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--clusters", type=int, default=256, help="mixture cells of the fitted set")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, expect="retrieval")
    trained = np.load(bundle.path("item_embeddings.npy")).astype(np.float32)
    n, d = trained.shape
    sets = {
        "trained": trained,
        "fitted": fitted_vectors(n, trained, bundle.scoring or Scoring(), args.clusters),
        "clustered": vectors(n, d, "clustered"),
        "random": vectors(n, d, "random"),
    }
    users = user_queries(bundle, 1000)
    faiss.omp_set_num_threads(1)
    print(f"{dt.date.today()}, {machine()}, faiss {faiss.__version__}, {n} items x {d}, {args.bundle}")
    tops = (8, 16, 32)
    print(
        f"  {'vectors':>9} {'lists':>5} {'max/mean cell':>13} "
        + " ".join(f"{'var top ' + str(t):>10}" for t in tops)
        + "  recall@100 at nprobe "
        + " ".join(f"{p:>5}" for p in args.nprobe)
    )
    for name, x in sets.items():
        probe = RecallProbe.sample(x, 100, 1000, seed=5)
        index = build(x, IndexConfig(kind="ivf"))
        ivf = faiss.extract_index_ivf(index)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
        recalls, p50 = [], []
        for nprobe in args.nprobe:
            set_search(index, "ivf", nprobe)
            recalls.append(probe.recall(index))
            p50.append(single_query_p50_ms(index, probe.queries[:200]))
        print(
            f"  {name:>9} {ivf.nlist:>5} {sizes.max() / sizes.mean():>13.1f} "
            + " ".join(f"{v:>10.2f}" for v in spectrum(x, tops))
            + "                       "
            + " ".join(f"{r:>5.3f}" for r in recalls),
            flush=True,
        )
        print(
            f"  {'':>9} {'':>5} {'':>13} {'':>32}  p50 ms one query  " + " ".join(f"{t:>5.2f}" for t in p50)
        )
        if name == "trained" and users is not None:
            user_probe = RecallProbe(users, ExactInnerProductIndex(x).search(users, 100)[0])
            recalls = []
            for nprobe in args.nprobe:
                set_search(index, "ivf", nprobe)
                recalls.append(user_probe.recall(index))
            print(
                f"  {'':>9} {'':>5} {'':>13} {'':>32}  the model's users as queries "
                + " ".join(f"{r:>5.3f}" for r in recalls)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
