"""The reference model a Confidence Ranking job trains against: normally the model serving now.

Confidence Ranking (Zhu et al., 2023) retrains a CTR model so that on every example it is more
confident about the observed label than the model it replaces. That model is named in the job
config (``objective.reference``) as a registry URI or a ranker bundle, and scored here with ONNX
Runtime on exactly the inputs the server would give it: the new training rows are decoded to raw
ids and encoded with the *reference bundle's own* id mapping, with the new data's features.

What does not fit is handled explicitly:

* a user the reference never saw is scored as a cold start (padding id), as the server does;
* an item it never saw has no embedding, so the row has no reference: ``covered`` is False and
  the objective gives that row the BCE term alone (see ``ConfidenceRankingLoss``);
* history items it never saw drop out of the history, as at serving time;
* a bundle that is not a ranker, or that reads other dense features or another genre vocabulary
  size, is refused with a ``ConfigError`` when the job starts.

``item_rate`` is the no-model reference: each item's smoothed positive rate in the training data.
Rows are scored batch by batch (the negatives are sampled per batch), about a millisecond per
thousand rows for a DLRM on one thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from rankforge.errors import ConfigError, DataError
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import PreparedData
from rankforge.serving.bundle import Bundle
from rankforge.serving.id_lookup import translate_ids
from rankforge.serving.model_runtime import load_ranker


class Reference(Protocol):
    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, histories: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference logits [n] float32, covered [n] bool) for rows of data indices."""
        ...


class ItemRateReference:
    """Logit of each item's smoothed positive rate: a popularity prior, not a previous model."""

    def __init__(self, item_pos_rate: torch.Tensor) -> None:
        rate = item_pos_rate.clamp(1e-6, 1 - 1e-6)
        self.logits = (torch.log(rate) - torch.log1p(-rate)).float()

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, histories: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits[items], torch.ones(len(items), dtype=torch.bool)


class BundleReference:
    """A ranker bundle scored through the server's own runtime, in the bundle's id space."""

    def __init__(
        self, bundle: Bundle, data: PreparedData, dense_features: list[str], item_genres: torch.Tensor
    ) -> None:
        m = bundle.manifest
        if m.kind != "ranker":
            raise ConfigError(
                f"objective.reference {str(bundle.directory)[:120]!r} is a {m.kind} bundle; "
                "Confidence Ranking needs a ranker"
            )
        if list(m.dense_features) != list(dense_features):
            raise ConfigError(
                f"objective.reference reads dense features {m.dense_features}, "
                f"this job builds {dense_features}"
            )
        if m.n_genres != data.n_genres:
            raise ConfigError(
                f"objective.reference knows {m.n_genres} genres, this data {data.n_genres}: genre ids differ"
            )
        self.bundle = bundle
        self.runtime = load_ranker(bundle, "reference", threads=1)
        maps = translate_ids(data.mapping, bundle.id_mapping)
        self.user_map, self.item_map = maps["users"], maps["items"]
        self.item_genres = item_genres
        if (self.item_map < 0).all():
            raise DataError(
                f"objective.reference {str(bundle.directory)[:120]!r} knows none of this data's items"
            )

    def coverage(self) -> dict[str, float]:
        """Shares of this data's users and items the reference knows (logged with the run)."""
        return {
            "reference_user_coverage": float((self.user_map >= 0).mean()),
            "reference_item_coverage": float((self.item_map >= 0).mean()),
        }

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, histories: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        item_idx = self.item_map[items.numpy()]
        history = histories.numpy()
        encoded_history = np.where(history >= 0, self.item_map[np.maximum(history, 0)], -1)
        # unknown history items become padding, pushed to the end so the tail keeps the latest
        order = np.argsort(encoded_history < 0, axis=1, kind="stable")
        encoded_history = np.take_along_axis(encoded_history, order, axis=1)
        genres = self.item_genres[items].numpy()
        user_idx = users.numpy()
        logits = self.runtime.score_rows(
            np.where(user_idx >= 0, self.user_map[np.maximum(user_idx, 0)], -1),  # -1: cold start
            _fit_width(encoded_history, self.bundle.manifest.history_len),
            dense.numpy(),
            item_idx,
            [row[row >= 0] for row in genres],
        )
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(item_idx >= 0)


def _fit_width(padded: np.ndarray, width: int) -> np.ndarray:
    """Left-aligned, ``-1``-padded rows cut or padded to ``width``, keeping each row's latest ids."""
    have = padded.shape[1]
    lengths = (padded >= 0).sum(axis=1)
    start = np.maximum(lengths - width, 0)[:, None]
    columns = start + np.arange(width)[None, :]
    inside = columns < lengths[:, None]
    gathered = np.take_along_axis(padded, np.minimum(columns, max(have - 1, 0)), axis=1) if have else columns
    return np.where(inside, gathered, -1).astype(np.int64)


def open_reference(
    spec: str | None, data: PreparedData, item_genres: torch.Tensor, item_pos_rate: torch.Tensor, folder: Path
) -> ItemRateReference | BundleReference | None:
    """The reference named by ``objective.reference``; a registry model is downloaded to ``folder``."""
    if spec is None:
        return None
    if spec == "item_rate":
        return ItemRateReference(item_pos_rate)
    bundle = fetch_bundle(spec, folder, "objective.reference")
    return BundleReference(bundle, data, list(DENSE_FEATURES), item_genres)


def fetch_bundle(spec: str, folder: Path, setting: str) -> Bundle:
    """The bundle a training setting names (``objective.reference``, ``training.warm_start``): a
    registry URI is downloaded into ``folder`` (emptied first), a path is opened where it is; a
    name that resolves to nothing is a ``ConfigError`` naming the setting."""
    from rankforge.pipelines.registry import download_bundle  # the registry sits above training

    shutil.rmtree(folder, ignore_errors=True)
    try:
        return download_bundle(spec, folder if spec.startswith("models:/") else None)
    except DataError as exc:
        raise ConfigError(f"{setting}: {exc}") from exc
