"""Approximate nearest-neighbour retrieval (FAISS), built at export next to the exact vectors.

Exact inner product over every item costs ~20 ms per query at 1M items (``ExactInnerProductIndex``
is already at the numpy/BLAS floor), so large catalogues need an ANN index:

* ``hnsw``: FAISS ``HNSW{m},Flat`` -- a navigable small-world graph; the best recall per
  millisecond, slower to build, more memory (the graph beside the vectors);
* ``ivf``: FAISS ``IVF{lists},Flat`` -- k-means cells, ``nprobe`` of them scanned per query;
  fast to build, memory of the vectors alone. With ``ivf_codes = "sq8"`` the cells hold 8-bit
  scalar-quantised codes (a quarter of the bytes to scan) and the best ``refine_factor * k`` of
  them are re-scored exactly (FAISS ``IVF{lists},SQ8,RFlat``): the same recall for a quarter
  less latency where the scan is what costs (``benchmarks/ann_index.py``, one run: 1M items,
  nprobe 1,024 of 4,000 cells, recall@100 0.967 at p50 3.67 ms against 4.87 ms), for 64 more
  bytes per item.
* ``scann``: Google's ScaNN (``bundles.scann_index``) -- k-means leaves like IVF, scanned with
  4-bit anisotropic product codes, the best ``scann_reorder`` re-scored exactly: at a
  trained-like million items the recall@100 of ``ivf`` with 8-bit cells for a third to a
  quarter of the search time (``benchmarks/README.md``, issue #22). Linux wheels only.

All use the inner-product metric on the bundle's item vectors, which are already in the model's
scoring space (unit vectors for a cosine model, see ``models.scoring``), so the index ranks exactly
by the similarity the model was trained with. The export measures the index's recall@K against
exact search, using item vectors themselves as queries, records it in the manifest, and refuses
(or warns, by config) below a threshold: an index that silently loses a tenth of the true
neighbours would be a quality regression nobody sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rankforge.bundles.candidate_index import ExactInnerProductIndex
from rankforge.bundles.scann_index import SCANN_DIR, ScannIndex, scann_available
from rankforge.errors import DataError

log = logging.getLogger(__name__)
INDEX_FILE = "item_index.faiss"
#: A built index: FAISS's, or ScaNN's behind the same ``search(queries, k) -> (scores, ids)``.
SearchIndex: TypeAlias = faiss.Index | ScannIndex


#: The largest value a config or a manifest may give each search field: beyond them a search costs
#: more than scanning every item (efSearch 1e8 took 27 s to load and 14 s a request) or overflows
#: the libraries' 32-bit ints (2**31 was a TypeError or OverflowError at start-up).
MAX_SEARCH = {"ef_search": 1 << 16, "nprobe": 1 << 20, "lists": 1 << 20, "reorder": 1 << 20}


#: What raises an index kind's recall, for the messages that refuse a low one.
RECALL_KNOBS = {"hnsw": "ef_search", "ivf": "nprobe", "scann": "nprobe or scann_reorder"}


class IndexConfig(BaseModel):
    """``[serving_index]`` of a training config: how the exported bundle searches its items."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["exact", "hnsw", "ivf", "scann"] = "exact"
    hnsw_m: int = Field(32, ge=4, le=128)
    ef_construction: int = Field(200, ge=8)
    # >= the k searched; 256 holds recall@100 >= 0.95 here
    ef_search: int = Field(256, ge=1, le=MAX_SEARCH["ef_search"])
    ivf_lists: int | None = Field(None, ge=1, le=MAX_SEARCH["lists"])  # default: about 4 * sqrt(items)
    # cells scanned per query (IVF's nprobe, ScaNN's leaves_to_search); default a quarter of
    # IVF's cells (recall@100 0.97 at 1M clustered items in benchmarks/ann_index.py, at ~4 ms:
    # IVF trades latency for recall through this knob), a twentieth of ScaNN's leaves
    nprobe: int | None = Field(None, ge=1, le=MAX_SEARCH["nprobe"])
    # what the cells hold: the vectors ("flat") or 8-bit codes re-scored exactly ("sq8")
    ivf_codes: Literal["flat", "sq8"] = "flat"
    # sq8: candidates re-scored exactly, per item asked for. 1.5 keeps recall@100 where 2 had it
    # (0.9574 vs 0.9575 at a trained-like million, nprobe 112) for 10% less search time; at 1 it
    # falls (0.931 vs 0.953 at nprobe 96): the codes' ranking errors sit at the boundary
    refine_factor: float = Field(1.5, ge=1.0, allow_inf_nan=False)
    # default: about 2 * sqrt(items) (ScaNN's 2,000 at 1M)
    scann_leaves: int | None = Field(None, ge=1, le=MAX_SEARCH["lists"])
    # scann: candidates re-scored exactly on the float vectors, whatever k is asked (at least k);
    # 1,000 gives recall@100 0.95-0.97 at a trained-like million where 500 caps it near 0.91
    scann_reorder: int = Field(1000, ge=1, le=MAX_SEARCH["reorder"])
    recall_k: int = Field(100, ge=1)  # recall@K measured against exact search at export
    recall_queries: int = Field(1000, ge=10)
    min_recall: float = Field(0.95, ge=0, le=1)
    # the quality that matters is the served answer's: Recall@served_k of retrieval through the
    # index on held-out users (validation split, else test), against the same with exact search;
    # a relative loss above this is refused (or warned, by on_low_recall) at export
    served_k: int = Field(20, ge=1)
    max_served_recall_loss: float = Field(0.01, ge=0, le=1)
    on_low_recall: Literal["refuse", "warn"] = "refuse"
    # search the cheapest setting that reaches min_recall instead of taking nprobe / ef_search as
    # given: both doubled from 16 until recall@K on item-vector queries reaches it, then the
    # interval below halved twice (no held-out user is looked at, so the served check below
    # stays an independent measurement)
    tune_search: bool = False

    @model_validator(mode="after")
    def _kind_available(self) -> IndexConfig:
        """A kind whose library is missing fails with the config, not after training."""
        if self.kind == "scann" and not scann_available():
            raise ValueError("kind 'scann' needs the scann package, which has wheels for Linux x86-64 only")
        return self


@dataclass(frozen=True)
class ServedRecall:
    """Recall@k of retrieval for held-out users, through the index (``ann``) and by exact search."""

    split: str
    k: int
    ann: float
    exact: float

    @property
    def loss(self) -> float:
        """The index's relative loss of served recall (0 when exact search finds nothing)."""
        return max(0.0, 1.0 - self.ann / self.exact) if self.exact > 0 else 0.0


#: What the exporter's caller measures: the served recall of a candidate index over the bundle's
#: item vectors (the caller holds the model and the held-out users; this layer holds neither).
ServedRecallCheck = Callable[["AnnIndex", int], ServedRecall]


def build(vectors: np.ndarray, config: IndexConfig) -> SearchIndex:
    """An inner-product index over ``vectors`` ``[n, d]`` (float32) of ``config.kind``."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if config.kind == "scann":
        leaves = config.scann_leaves or max(1, min(n // 100, int(2 * math.sqrt(n))))
        return ScannIndex.build(x, leaves, config.nprobe or max(16, leaves // 20), config.scann_reorder)
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        set_search(index, "hnsw", config.ef_search)
    elif config.kind == "ivf":
        lists = config.ivf_lists or max(1, min(n // 39, int(4 * math.sqrt(n))))
        codes = "Flat" if config.ivf_codes == "flat" else "SQ8,RFlat"
        index = faiss.index_factory(d, f"IVF{lists},{codes}", faiss.METRIC_INNER_PRODUCT)
        # k-means on at most 200k vectors (or 256 per list): enough for stable cells, minutes less
        n_train = min(n, max(39 * lists, min(256 * lists, 200_000)))
        sample = x if n_train == n else x[np.random.default_rng(0).choice(n, n_train, replace=False)]
        index.train(sample)
        set_search(index, "ivf", config.nprobe or max(16, lists // 4))
        if config.ivf_codes == "sq8":
            faiss.downcast_index(index).k_factor = config.refine_factor
    else:
        raise ValueError(f"no ANN index for kind {config.kind!r}")
    index.add(x)
    return index


@dataclass(frozen=True)
class RecallProbe:
    """Sampled item vectors as queries ``[q, d]`` and their exact top ``k`` ids ``[q, k]``."""

    queries: np.ndarray
    truth: np.ndarray

    @classmethod
    def sample(cls, vectors: np.ndarray, k: int, n_queries: int, seed: int = 0) -> RecallProbe:
        exact = ExactInnerProductIndex(vectors)
        rows = np.random.default_rng(seed).choice(exact.size, min(n_queries, exact.size), replace=False)
        queries = exact.vectors[rows]
        return cls(queries, exact.search(queries, min(k, exact.size))[0])

    def recall(self, index: SearchIndex) -> float:
        """Mean share of each query's exact top ``k`` that ``index`` returns."""
        k = self.truth.shape[1]
        _, found = index.search(self.queries, k)
        hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(self.truth, found, strict=True)]
        return float(np.mean(hits) / k)


def recall_at_k(index: SearchIndex, vectors: np.ndarray, k: int, n_queries: int, seed: int = 0) -> float:
    """Mean share of the exact top ``k`` (by inner product) that the index returns, with sampled
    item vectors as queries."""
    return RecallProbe.sample(vectors, k, n_queries, seed).recall(index)


@dataclass(frozen=True)
class AnnIndex:
    """The serving side: ``search`` through the index, ``scores`` of given rows exactly."""

    index: SearchIndex
    exact: ExactInnerProductIndex

    @property
    def size(self) -> int:
        return self.exact.size

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
        k = min(int(k), self.size)
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        scores, ids = self.index.search(query, k)
        if (ids < 0).any():  # fewer than k found (tiny cells): fall back to exact for those rows
            bad = (ids < 0).any(axis=1)
            ids[bad], scores[bad] = self.exact.search(query[bad], k)
        return ids.astype(np.int64), scores

    def scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.exact.scores(query, ids)


def export_index(
    vectors: np.ndarray, config: IndexConfig, directory: Path, served: ServedRecallCheck | None = None
) -> dict[str, object]:
    """Build, measure and write the index into a bundle; what the manifest records about it.

    Two measurements, each refused (or warned) below its threshold: the index's recall@K against
    exact search with item vectors as queries, and -- when ``served`` is given -- the served
    Recall@``served_k`` of held-out users through the index against exact search."""
    index = build(vectors, config)
    if config.tune_search:
        recall, tried = tune_search(index, vectors, config)
    else:
        recall = recall_at_k(index, vectors, config.recall_k, config.recall_queries)
    record: dict[str, object] = {
        "kind": config.kind,
        "file": SCANN_DIR if isinstance(index, ScannIndex) else INDEX_FILE,
        f"recall_at_{min(config.recall_k, len(vectors))}": round(recall, 4),
        "min_recall": config.min_recall,
        **_search_record(index, config),
    }
    if config.tune_search:
        record["tuned"] = [[value, round(r, 4)] for value, r in tried]
    if recall < config.min_recall:
        message = (
            f"{config.kind} index recall@{config.recall_k} {recall:.4f} is below serving_index.min_recall "
            f"{config.min_recall} (raise {RECALL_KNOBS[config.kind]}, or lower the threshold)"
        )
        _refuse_or_warn(message, config)
    if served is not None:
        got = served(AnnIndex(index, ExactInnerProductIndex(vectors)), config.served_k)
        record["served_recall"] = {
            "split": got.split,
            "k": got.k,
            "ann": round(got.ann, 4),
            "exact": round(got.exact, 4),
            "loss": round(got.loss, 4),
            "max_loss": config.max_served_recall_loss,
        }
        if got.loss > config.max_served_recall_loss:
            _refuse_or_warn(
                f"{config.kind} index loses {got.loss:.1%} of {got.split} Recall@{got.k} through retrieval "
                f"({got.ann:.4f} vs exact {got.exact:.4f}), more than serving_index.max_served_recall_loss "
                f"{config.max_served_recall_loss:.1%} (raise {RECALL_KNOBS[config.kind]}, or the threshold)",
                config,
            )
    if isinstance(index, ScannIndex):
        index.save(directory / SCANN_DIR)
    else:
        faiss.write_index(index, str(directory / INDEX_FILE))
    return record


#: The search settings ``tune_search`` tries: doubling, from cheap to the HNSW ceiling, then this
#: many halvings of the interval below the first that passes (the setting found is within a
#: quarter of that interval of the cheapest: 96 rather than 128 cells probed, say).
TUNE_START, HNSW_EF_MAX, TUNE_BISECTIONS = 16, 4096, 2


def set_search(index: SearchIndex, kind: str, value: int) -> None:
    """The search-time knob of a built index: HNSW's efSearch, IVF's nprobe or ScaNN's
    leaves_to_search (the last two capped at the cell count)."""
    if isinstance(index, ScannIndex):
        index.leaves_to_search = min(value, index.leaves)
    elif kind == "hnsw":
        index.hnsw.efSearch = value
    else:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(value, ivf.nlist)


def tune_search(
    index: SearchIndex, vectors: np.ndarray, config: IndexConfig
) -> tuple[float, list[tuple[int, float]]]:
    """Set ``index`` to the cheapest setting of its search knob whose recall@K reaches
    ``config.min_recall`` (the most expensive one tried when none does); (its recall, every
    (setting, recall) tried, in the order tried). Doublings from 16 find the first setting that
    reaches it; ``TUNE_BISECTIONS`` halvings of the interval below it then look for a cheaper one
    (recall grows with the knob: a setting between a failing and a passing one is tried, and the
    interval kept is the one that still straddles the threshold). The same sampled queries
    measure every setting."""
    if isinstance(index, ScannIndex):
        top = index.leaves
    else:
        top = HNSW_EF_MAX if config.kind == "hnsw" else int(faiss.extract_index_ivf(index).nlist)
    values, value = [], TUNE_START
    while value < top:
        values.append(value)
        value *= 2
    values.append(top)
    probe = RecallProbe.sample(vectors, config.recall_k, config.recall_queries)
    tried: list[tuple[int, float]] = []

    def measure(value: int) -> float:
        set_search(index, config.kind, value)
        recall = probe.recall(index)
        tried.append((value, recall))
        return recall

    failing, passing = 0, None
    for value in values:
        if measure(value) >= config.min_recall:
            passing = value
            break
        failing = value
    if passing is None:
        return tried[-1][1], tried
    for _ in range(TUNE_BISECTIONS if failing else 0):
        middle = (failing + passing) // 2
        if middle in (failing, passing):
            break
        if measure(middle) >= config.min_recall:
            passing = middle
        else:
            failing = middle
    set_search(index, config.kind, passing)
    return dict(tried)[passing], tried


def _ivf_record(index: faiss.Index, config: IndexConfig) -> dict[str, object]:
    """An IVF index's search parameters as the manifest records them (and ``load_index`` sets)."""
    ivf = faiss.extract_index_ivf(index)
    record: dict[str, object] = {"nprobe": int(ivf.nprobe), "lists": int(ivf.nlist)}
    record["codes"] = config.ivf_codes
    if config.ivf_codes == "sq8":
        record["refine_factor"] = config.refine_factor
    return record


def _search_record(index: SearchIndex, config: IndexConfig) -> dict[str, object]:
    """An index's search parameters as the manifest records them (and ``load_index`` sets)."""
    if isinstance(index, ScannIndex):
        return {"nprobe": index.leaves_to_search, "lists": index.leaves, "reorder": index.reorder}
    if config.kind == "hnsw":
        return {"hnsw_m": config.hnsw_m, "ef_search": int(index.hnsw.efSearch)}
    return _ivf_record(index, config)


def _refuse_or_warn(message: str, config: IndexConfig) -> None:
    if config.on_low_recall == "refuse":
        raise DataError(message)
    log.warning(message)


#: Sampled exact queries a bundle's index must answer at load, and how far below the recall
#: recorded at export their recall may fall (sampling noise) before the bundle is refused.
CHECK_QUERIES = 64
RECALL_TOLERANCE = 0.1


def _positive_int(record: dict[str, object], key: str, where: Path) -> int:
    value = record.get(key)
    most = MAX_SEARCH[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise DataError(
            f"ANN index {where}: {key} must be an integer in [1, {most}], got {str(value)[:40]!r}"
        )
    return value


def _recorded_recall(record: dict[str, object]) -> tuple[int, float] | None:
    """(K, recall@K) the export measured, from the manifest's ``recall_at_K`` entry."""
    for key, value in record.items():
        if (
            key.startswith("recall_at_")
            and key[len("recall_at_") :].isdigit()
            and isinstance(value, int | float)
        ):
            return int(key[len("recall_at_") :]), float(value)
    return None


def _set_refine(index: faiss.Index, record: dict[str, object], path: Path) -> None:
    """An IVF index with coded cells re-scores its candidates exactly: the file must be such an
    index exactly when the manifest says ``codes = "sq8"``, and searches with its factor."""
    codes = record.get("codes", "flat")
    refine = faiss.downcast_index(index)
    refined = isinstance(refine, faiss.IndexRefine)
    if codes not in ("flat", "sq8") or refined != (codes == "sq8"):
        raise DataError(
            f"ANN index {path}: the manifest says codes {str(codes)[:20]!r}, "
            f"the file holds {type(refine).__name__}"
        )
    if refined:
        factor = record.get("refine_factor")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 <= factor < math.inf:
            raise DataError(
                f"ANN index {path}: refine_factor must be a number >= 1, got {str(factor)[:40]!r}"
            )
        refine.k_factor = float(factor)


def load_index(
    directory: Path, vectors: np.ndarray, record: dict[str, object]
) -> AnnIndex | ExactInnerProductIndex:
    """The index a bundle's manifest names (exact when it names none), verified before it serves:
    its file lies inside the bundle, its kind and search parameters are what the manifest says,
    it covers the item vectors (count, dimension), and a sample of exact top-K queries finds
    their neighbours at the recall recorded at export. Anything else is a ``DataError``: an index
    over other vectors, rows shuffled or bytes corrupted would otherwise answer OK with wrong
    items."""
    exact = ExactInnerProductIndex(vectors)
    kind = record.get("kind", "exact") if record else "exact"
    if kind == "exact":
        return exact
    if kind not in ("hnsw", "ivf", "scann"):
        raise DataError(f"bundle {directory}: unknown ANN index kind {str(kind)[:40]!r}")
    scann = kind == "scann"  # a directory of ScaNN's files; the FAISS kinds are one file
    name = str(record.get("file", SCANN_DIR if scann else INDEX_FILE))
    path = (directory / name).resolve()
    what = "directory" if scann else "file"
    if not path.is_relative_to(directory.resolve()) or not (path.is_dir() if scann else path.is_file()):
        raise DataError(
            f"bundle {directory}: ANN index {what} {name[:80]!r} is not a {what} inside the bundle"
        )
    index = _read_scann(path, record, exact.dim) if scann else _read_faiss(path, str(kind), record)
    if index.ntotal != exact.size or index.d != exact.dim:
        raise DataError(
            f"ANN index {path} holds {index.ntotal} x {index.d}, the bundle {exact.size} x {exact.dim}"
        )
    recorded = _recorded_recall(record)
    if recorded is None:  # without it nothing checks that the index fits these vectors
        raise DataError(
            f"bundle {directory}: the ANN index record has no recall_at_K measured at export; "
            "export the bundle again"
        )
    k, expected = recorded
    if not (1 <= k <= MAX_SEARCH["reorder"] and 0.0 <= expected <= 1.0):
        raise DataError(
            f"bundle {directory}: the ANN index record's recall_at_{k} = {expected!r} is out of range"
        )
    found = recall_at_k(index, vectors, k, CHECK_QUERIES, seed=1)
    if found < expected - RECALL_TOLERANCE:
        raise DataError(
            f"ANN index {path} does not match the bundle's item vectors: recall@{min(k, exact.size)} "
            f"{found:.2f} on {min(CHECK_QUERIES, exact.size)} sampled exact queries, {expected:.2f} "
            "recorded at export (rows shuffled, another index, or corrupted)"
        )
    return AnnIndex(index, exact)


def _read_faiss(path: Path, kind: str, record: dict[str, object]) -> faiss.Index:
    """A FAISS index file of ``kind`` ("hnsw" or "ivf"), set to the manifest's search parameters."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DataError(f"cannot read the ANN index {path}: {str(exc)[:160]}") from exc
    if kind == "hnsw":
        if not hasattr(index, "hnsw"):
            raise DataError(
                f"ANN index {path}: the manifest says hnsw, the file holds {type(index).__name__}"
            )
        set_search(index, "hnsw", _positive_int({"ef_search": 256, **record}, "ef_search", path))
        return index
    try:
        faiss.extract_index_ivf(index)  # raises for anything but an IVF index
    except RuntimeError as exc:
        raise DataError(
            f"ANN index {path}: the manifest says ivf, the file holds {type(index).__name__}"
        ) from exc
    set_search(index, "ivf", _positive_int({"nprobe": 16, **record}, "nprobe", path))
    _set_refine(index, record, path)
    return index


def _read_scann(path: Path, record: dict[str, object], dim: int) -> ScannIndex:
    """A serialized ScaNN searcher with the manifest's leaves, leaves searched and re-scored count."""
    leaves = _positive_int(record, "lists", path)
    nprobe, reorder = _positive_int(record, "nprobe", path), _positive_int(record, "reorder", path)
    try:
        return ScannIndex.load(path, dim, leaves, min(nprobe, leaves), reorder)
    except DataError:
        raise
    except (IndexError, TypeError, OverflowError, ValueError, RuntimeError) as exc:  # damaged assets
        why = f"{type(exc).__name__}: {str(exc)[:160]}"
        raise DataError(f"cannot read the ScaNN index {path}: {why}") from exc
