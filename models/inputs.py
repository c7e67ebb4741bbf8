"""Sparse inputs in one portable form: padded id matrices, ``-1`` for padding.

Padded ``[batch, max_len]`` int64 matrices go through every layer unchanged (Polars lists in,
ONNX inputs out); :func:`padded_to_kjt` turns them into the KeyedJaggedTensor TorchRec wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch
from torchrec import KeyedJaggedTensor
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from rankforge.features.aggregates import dense_matrix
from rankforge.features.feature_spec import ITEM_ID, USER_HISTORY, USER_ID, InputLayout, Side
from rankforge.features.sequences import PAD, padded_id_lists


def normal_init(std: float | None):
    """``N(0, std)`` table init (the papers' choice), or TorchRec's default uniform for ``None``."""
    if std is None:
        return None
    return lambda weight: torch.nn.init.normal_(weight, 0.0, std)


@dataclass(frozen=True)
class SparseFeature:
    """One id feature and its embedding table (one table per feature)."""

    name: str
    num_embeddings: int
    max_len: int = 1
    pooling: Literal["sum", "mean"] = "sum"

    def table_config(self, embedding_dim: int, init_std: float | None = None) -> EmbeddingBagConfig:
        """Its table: ``N(0, init_std)`` rows, or TorchRec's default uniform for ``None``."""
        return EmbeddingBagConfig(
            name=f"t_{self.name}",
            embedding_dim=embedding_dim,
            num_embeddings=self.num_embeddings,
            feature_names=[self.name],
            pooling=PoolingType.MEAN if self.pooling == "mean" else PoolingType.SUM,
            init_fn=normal_init(init_std),
        )


def pad_lists(values: pl.Series | list[list[int]], max_len: int) -> torch.Tensor:
    """Right-pad (and truncate, keeping the most recent tail) id lists to ``[n, max_len]``."""
    return torch.from_numpy(padded_id_lists(values, max_len))


def ids_column(values: torch.Tensor | np.ndarray | pl.Series) -> torch.Tensor:
    """A single id per row as a ``[n, 1]`` padded matrix."""
    array = values.to_numpy() if isinstance(values, pl.Series) else values
    return torch.tensor(np.asarray(array), dtype=torch.int64).reshape(-1, 1)


def padded_to_kjt(features: dict[str, torch.Tensor], keys: list[str]) -> KeyedJaggedTensor:
    """Build a KJT (keys in ``keys`` order) from padded matrices that share the batch size."""
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"missing sparse feature(s) {missing}; got {sorted(features)}")
    batch = {features[k].shape[0] for k in keys}
    if len(batch) != 1:
        raise ValueError(
            f"sparse features disagree on batch size: { {k: tuple(features[k].shape) for k in keys} }"
        )
    lengths, values = [], []
    for k in keys:
        ids = features[k]
        if ids.dim() != 2:
            raise ValueError(f"sparse feature {k!r} must be [batch, max_len], got {tuple(ids.shape)}")
        mask = ids != PAD
        lengths.append(mask.sum(dim=1))
        values.append(ids[mask])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32)
    )


#: The feature-table column each built-in input is read from (a declared feature's column is its name).
BUILT_IN_COLUMNS = {USER_ID: "user_idx", ITEM_ID: "item_idx", USER_HISTORY: "history"}


def sparse_features(layout: InputLayout, side: Side) -> list[SparseFeature]:
    """The embedding tables of one side's inputs, as the layout declares them."""
    return [
        SparseFeature(s.name, s.num_embeddings, s.max_len, s.pooling) for s in layout.sparse if s.side == side
    ]


def side_inputs(frame: pl.DataFrame, layout: InputLayout, side: Side) -> dict[str, torch.Tensor]:
    """One side's padded inputs from rows of the feature tables (``user_idx``/``item_idx``,
    ``history`` and the declared features' columns)."""
    out = {}
    for s in layout.sparse:
        if s.side != side:
            continue
        column = BUILT_IN_COLUMNS.get(s.name, s.name)
        # the id columns hold one id per row; every other input is a list (a history of length 1 too)
        out[s.name] = (
            ids_column(frame[column]) if s.name in (USER_ID, ITEM_ID) else pad_lists(frame[column], s.max_len)
        )
    return out


def dense_inputs(frame: pl.DataFrame, names: tuple[str, ...] | list[str]) -> torch.Tensor:
    """Dense features ``[n, len(names)]`` float32; missing values become 0."""
    return torch.from_numpy(dense_matrix(frame, names))
