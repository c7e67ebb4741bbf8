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
* a bundle that is not a ranker, or that reads other dense features or a declared feature with
  another vocabulary, is refused with a ``ConfigError`` when the job starts.

``item_rate`` is the no-model reference: each item's smoothed positive rate in the training data.
Rows are scored batch by batch (the negatives are sampled per batch), about a millisecond per
thousand rows for a DLRM on one thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from rankforge.bundles.bundle import Bundle
from rankforge.bundles.id_lookup import translate_ids
from rankforge.bundles.runtime import load_ranker
from rankforge.errors import ConfigError, DataError
from rankforge.features.pipeline import PreparedData

if TYPE_CHECKING:
    from rankforge.training.batches import FeatureTables


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

    def __init__(self, bundle: Bundle, data: PreparedData, tables: FeatureTables) -> None:
        m = bundle.manifest
        if m.kind != "ranker":
            raise ConfigError(
                f"objective.reference {str(bundle.directory)[:120]!r} is a {m.kind} bundle; "
                "Confidence Ranking needs a ranker"
            )
        if list(m.dense_features) != data.inputs.dense_features:
            raise ConfigError(
                f"objective.reference reads dense features {m.dense_features}, "
                f"this job builds {data.inputs.dense_features}"
            )
        unmatched = bundle.unmatched_feature(data.vocabulary_digests())
        if unmatched is not None and unmatched[1] == "missing":
            raise ConfigError(
                f"objective.reference reads feature {unmatched[0]!r}, which this data does not declare"
            )
        if unmatched is not None:
            raise ConfigError(
                f"objective.reference: feature {unmatched[0]!r} has another vocabulary there; its ids differ"
            )
        self.bundle = bundle
        self.runtime = load_ranker(bundle, "reference", threads=1)
        maps = translate_ids(data.mapping, bundle.id_mapping)
        self.user_map, self.item_map = maps["users"], maps["items"]
        self.tables = tables
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
        layout, user_idx = self.bundle.inputs, users.numpy()
        known = torch.from_numpy(user_idx >= 0)
        user_lists = {}
        ours = self.tables.users(users.clamp(min=0), histories)  # sequences over these histories
        for s in layout.declared("user"):  # a cold user's features are padding, as when served
            rows = np.full((len(user_idx), s.max_len), -1, dtype=np.int64)
            rows[known.numpy()] = _fit_width(ours[s.name][known].numpy(), s.max_len)
            user_lists[s.name] = rows
        item_lists = {
            s.name: _fit_width(self.tables.item_lists[s.name][items].numpy(), s.max_len)
            for s in layout.declared("item")
        }
        logits = self.runtime.score_rows(
            np.where(user_idx >= 0, self.user_map[np.maximum(user_idx, 0)], -1),  # -1: cold start
            _fit_width(encoded_history, self.bundle.manifest.history_len),
            dense.numpy(),
            item_idx,
            item_lists,
            user_lists,
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
    spec: str | None, data: PreparedData, tables: FeatureTables, folder: Path
) -> ItemRateReference | BundleReference | None:
    """The reference named by ``objective.reference``; a registry model is downloaded to ``folder``."""
    if spec is None:
        return None
    if spec == "item_rate":
        return ItemRateReference(tables.item_pos_rate)
    bundle = fetch_bundle(spec, folder, "objective.reference")
    return BundleReference(bundle, data, tables)


def fetch_bundle(spec: str, folder: Path, setting: str) -> Bundle:
    """The bundle a training setting names (``objective.reference``, ``training.warm_start``): a
    registry URI is downloaded into ``folder`` (emptied first), a path is opened where it is; a
    name that resolves to nothing is a ``ConfigError`` naming the setting."""
    from rankforge.bundles.registry import download_bundle  # the registry sits above training

    shutil.rmtree(folder, ignore_errors=True)
    try:
        return download_bundle(spec, folder if spec.startswith("models:/") else None)
    except DataError as exc:
        raise ConfigError(f"{setting}: {exc}") from exc
