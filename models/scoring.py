"""A retrieval model's scoring function, declared once by the objective it trains with.

A model trained on cosine similarity ranks items differently from the dot product of the same
vectors (item norms carry popularity), so the similarity is part of the model, not of whoever
happens to score it. :class:`Scoring` maps raw tower outputs into *scoring space*:

* query vectors ``q = u / ||u|| / t`` for cosine (``q = u / t`` for dot),
* candidate vectors ``v = i / ||i||`` for cosine (``v = i`` for dot),

so that the plain inner product ``q . v`` *is* the model's score. Validation, the exported user
tower and item matrix, the retrieval index, bundle scoring, A/B and the server all take inner
products of scoring-space vectors and therefore all rank the way the model was trained.

A temperature ``t > 0`` scales every score of a query equally and never changes a ranking; it is
kept so that exported scores are the logits the objective saw (``cos / t``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the contract itself is plain data: bundles and the server read it without torch
    import torch

Similarity = Literal["dot", "cosine"]
SIMILARITIES: tuple[str, ...] = ("dot", "cosine")
#: Lower bound on vector norms (as in ``torch.nn.functional.normalize``): a zero vector stays zero.
NORM_EPS = 1e-12


@dataclass(frozen=True)
class Scoring:
    similarity: Similarity = "dot"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")
        if not self.temperature > 0:
            raise ValueError(f"scoring temperature must be > 0, got {self.temperature!r}")

    @classmethod
    def of(cls, objective: Any) -> Scoring:
        """The scoring an objective trains with: its ``similarity`` (default dot) and its
        ``score_temperature`` (default 1)."""
        return cls(
            similarity=getattr(objective, "similarity", "dot"),
            temperature=float(getattr(objective, "score_temperature", 1.0)),
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Scoring:
        return cls(**(raw or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors ``[..., d]`` whose inner products are the similarity itself (unit vectors for
        cosine, unchanged for dot): what an objective scores, before any temperature."""
        if self.similarity == "cosine":
            from torch.nn.functional import normalize

            return normalize(vectors, dim=-1, eps=NORM_EPS)
        return vectors

    def query(self, user: torch.Tensor) -> torch.Tensor:
        """User vectors ``[B, d]`` in scoring space."""
        user = self.normalise(user)
        return user / self.temperature if self.temperature != 1.0 else user

    def candidate(self, item: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[M, d]`` in scoring space."""
        return self.normalise(item)

    def score(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, M]`` of raw user ``[B, d]`` and raw item ``[M, d]`` vectors."""
        return self.query(user) @ self.candidate(item).T


DOT = Scoring("dot")
COSINE = Scoring("cosine")
