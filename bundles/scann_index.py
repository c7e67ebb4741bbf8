"""ScaNN (Google Research's ``scann``) as a served ANN index, behind FAISS's search signature.

ScaNN partitions the items into k-means leaves (as IVF does), scores the ``leaves_to_search``
nearest leaves with 4-bit anisotropic product codes (two dimensions per 16-centre codebook,
quantisation error weighted towards the direction that changes inner products: Guo et al.,
"Accelerating Large-Scale Inference with Anisotropic Vector Quantization", ICML 2020) in a
SIMD lookup-table scan, and re-scores the best ``reorder`` candidates exactly on the float
vectors. At a trained-like million items it reaches the recall@100 of FAISS ``IVF,SQ8,RFlat``
for a third to a quarter of the search time (``benchmarks/README.md``, issue #22).

The re-scored count is fixed (``reorder``), not a multiple of ``k``: the candidates re-scored
do not depend on ``k``, so the export's recall probe at K = 100 measures the same top 100 that
a request for 220 (200 + the user's seen items) returns. ``scann`` ships wheels for Linux only;
on other platforms this kind is refused with a message saying so (exact, HNSW and IVF remain).

Portability: ScaNN's ``serialize`` records each of its files by absolute path in
``scann_assets.pbtxt`` (a bundle copied elsewhere, downloaded from the registry or built on
another machine would read the files where it was built, or fail). ``save`` rewrites the record
to bare file names and ``load`` resolves them inside the directory it is given, refusing a
record that names anything else.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from google.protobuf import text_format

from rankforge.errors import DataError

#: The directory a bundle's ScaNN searcher is serialized into.
SCANN_DIR = "item_index.scann"
#: ScaNN's record of the files a serialized searcher consists of (``ScannAssets``, text format).
ASSETS = "scann_assets.pbtxt"
#: ScaNN's recommended setting for inner-product search (quantisation error parallel to the
#: vector weighted above the orthogonal error for scores above this).
ANISOTROPIC_THRESHOLD = 0.2
#: Dimensions per 4-bit sub-quantiser: ScaNN's default, and its fastest scan.
DIMS_PER_BLOCK = 2
TRAINING_SAMPLE = 250_000


def scann_available() -> bool:
    """Whether the ``scann`` package is installed (without importing it)."""
    return importlib.util.find_spec("scann") is not None


def _scann() -> Any:
    try:
        import scann  # an optional, Linux-only dependency: imported on use
    except ImportError as exc:
        raise DataError(
            f"the ANN index kind 'scann' needs the scann package (Linux wheels only): {exc}"
        ) from exc
    return scann.scann_ops_pybind


class ScannIndex:
    """A ScaNN searcher over ``ntotal`` item vectors of dimension ``d`` (inner product).

    ``search(queries [B, d], k) -> (scores [B, k] float32, ids [B, k] int64)``, best first, as
    FAISS answers; ``leaves_to_search`` (of ``leaves``) and ``reorder`` are set per instance
    and used by every search. Thread-safe for concurrent searches (ScaNN's search is const)."""

    def __init__(self, searcher: Any, d: int, leaves: int, leaves_to_search: int, reorder: int) -> None:
        self._searcher = searcher
        self.d = d
        self.leaves = leaves
        self.leaves_to_search = leaves_to_search
        self.reorder = reorder

    @property
    def ntotal(self) -> int:
        return int(self._searcher.size())

    @classmethod
    def build(cls, vectors: np.ndarray, leaves: int, leaves_to_search: int, reorder: int) -> ScannIndex:
        """Train leaves and codebooks on (a sample of) ``vectors`` ``[n, d]`` and index them all
        (training on every core)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        leaves = max(1, min(leaves, n))
        searched, rescored = min(leaves_to_search, leaves), min(reorder, n)
        searcher = (
            _scann()
            .builder(x, rescored, "dot_product")
            .tree(
                num_leaves=leaves, num_leaves_to_search=searched, training_sample_size=min(n, TRAINING_SAMPLE)
            )
            .score_ah(DIMS_PER_BLOCK, anisotropic_quantization_threshold=ANISOTROPIC_THRESHOLD)
            .reorder(rescored)
            .build()
        )
        return cls(searcher, d, leaves, searched, reorder)

    @classmethod
    def load(cls, directory: Path, d: int, leaves: int, leaves_to_search: int, reorder: int) -> ScannIndex:
        """A searcher ``save`` wrote into ``directory``, wherever that directory now lies; a
        directory ScaNN cannot read, a record naming files elsewhere, or a searcher over vectors
        of another dimension than ``d`` is a ``DataError``."""
        ops = _scann()
        try:
            assets = _assets(directory)
            searcher = ops.ScannSearcher(ops.scann_pybind.ScannNumpy(str(directory), assets))
        except (RuntimeError, ValueError, OSError) as exc:
            raise DataError(f"cannot read the ScaNN index {directory}: {str(exc)[:160]}") from exc
        index = cls(searcher, d, leaves, leaves_to_search, reorder)
        try:
            index.search(np.zeros((1, d), dtype=np.float32), 1)
        except RuntimeError as exc:  # "Query doesn't match dataset dimensionality"
            raise DataError(f"ScaNN index {directory} does not take {d}-dimensional queries: {exc}") from exc
        return index

    def save(self, directory: Path) -> None:
        """Serialize into ``directory`` (created), its file record by bare names (portable)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._searcher.serialize(str(directory))
        record = _parse_assets((directory / ASSETS).read_text())
        for asset in record.assets:
            asset.asset_path = PurePath(asset.asset_path).name
        (directory / ASSETS).write_text(text_format.MessageToString(record))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), self.ntotal)
        settings = {
            "final_num_neighbors": k,
            "pre_reorder_num_neighbors": max(self.reorder, k),
            "leaves_to_search": self.leaves_to_search,
        }
        if len(x) == 1:  # one request's query: the unbatched call is the cheaper one
            ids, scores = self._searcher.search(x[0], **settings)
            ids, scores = ids[None, :], scores[None, :]
        else:
            ids, scores = self._searcher.search_batched(x, **settings)
        found = np.full((len(x), k), -1, dtype=np.int64)  # FAISS's "not found": fewer than k
        out = np.full((len(x), k), -np.inf, dtype=np.float32)
        found[:, : ids.shape[1]], out[:, : scores.shape[1]] = ids, scores
        return out, found


def _parse_assets(text: str) -> Any:
    from scann.scann_ops import scann_assets_pb2  # scann's own message (installed with it)

    return text_format.Parse(text, scann_assets_pb2.ScannAssets())


def _assets(directory: Path) -> str:
    """The directory's file record with each file resolved inside ``directory``; a name that is
    not a bare file name of the directory is refused (``ValueError``)."""
    path = directory / ASSETS
    if not path.is_file():
        raise ValueError(f"no {ASSETS}")
    try:
        record = _parse_assets(path.read_text())
    except Exception as exc:  # text_format.ParseError, UnicodeDecodeError: not a record
        raise ValueError(f"{ASSETS} is not a ScaNN asset record: {str(exc)[:80]}") from exc
    for asset in record.assets:
        name = asset.asset_path
        if PurePath(name).name != name or not (directory / name).is_file():
            raise ValueError(f"{ASSETS} names {name[:80]!r}, not a file of the index directory")
        asset.asset_path = str((directory / name).resolve())
    return str(text_format.MessageToString(record))
