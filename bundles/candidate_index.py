"""Candidate retrieval behind one small interface, so an ANN index can replace exact search later."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from rankforge.errors import DataError


@runtime_checkable
class CandidateIndex(Protocol):
    @property
    def size(self) -> int: ...

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows per query ``[B, d]``: (row ids ``[B, k]`` int64, scores ``[B, k]``), best first."""
        ...

    def scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores of given rows ``[n]`` for one query ``[d]`` (for caller-supplied candidates)."""
        ...


class ExactInnerProductIndex:
    """Brute-force inner product: exact, and fast enough for catalogues of a few hundred thousand.

    ``argpartition`` finds the top k in O(n) and only those k are sorted.
    """

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise DataError(f"item vectors must be a non-empty [n_items, d] matrix, got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise DataError("item vectors contain NaN or infinite values")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = np.atleast_2d(np.asarray(query, dtype=np.float32))
        if query.shape[1] != self.dim:
            raise DataError(f"query dimension {query.shape[1]} != index dimension {self.dim}")
        k = min(int(k), self.size)
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        scores = query @ self.vectors.T
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < self.size
            else np.tile(np.arange(self.size), (query.shape[0], 1))
        )
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64), np.take_along_axis(
            top_scores, order, axis=1
        )

    def scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.vectors[np.asarray(ids, dtype=np.int64)] @ np.asarray(query, dtype=np.float32).reshape(-1)
