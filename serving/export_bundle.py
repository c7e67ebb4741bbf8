"""Turn trained torch models plus the feature pipeline's tables into servable bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import dense_inputs, item_inputs, padded_to_kjt, user_inputs
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.serving.ann_index import IndexConfig, export_index
from rankforge.serving.bundle import WEIGHTS, BundleKind, Manifest, write_manifest
from rankforge.serving.onnx_export import export_ranker, export_retrieval_towers

EXAMPLE_ROWS = 4


@torch.no_grad()
def item_embedding_matrix(
    model: RetrievalModel, data: PreparedData, max_genres: int, batch_size: int = 4096
) -> np.ndarray:
    """Every item's vector ``[n_items, d]`` in item-index order and in the model's scoring space
    (unit vectors for a cosine model), computed once for serving."""
    model.eval()
    chunks = []
    for start in range(0, data.item_features.height, batch_size):
        batch = item_inputs(data.item_features.slice(start, batch_size), max_genres)
        chunks.append(model.candidate(padded_to_kjt(batch, model.item_keys)))
    return torch.cat(chunks).float().numpy()


def ranking_frame(pairs: pl.DataFrame, data: PreparedData) -> pl.DataFrame:
    """Attach user and item features to (user_idx, item_idx) rows: the ranker's input table."""
    return pairs.join(data.user_features, on="user_idx", how="left").join(
        data.item_features, on="item_idx", how="left", suffix="_item"
    )


def build_retrieval_bundle(
    model: RetrievalModel,
    data: PreparedData,
    directory: str,
    max_genres: int,
    metrics: dict[str, float] | None = None,
    index: IndexConfig | None = None,
) -> Manifest:
    users = user_inputs(data.user_features.head(EXAMPLE_ROWS), data.history_len)
    items = item_inputs(data.item_features.head(EXAMPLE_ROWS), max_genres)
    user_art, item_art = export_retrieval_towers(model.eval(), users, items, directory)
    vectors = item_embedding_matrix(model, data, max_genres)
    np.save(f"{directory}/item_embeddings.npy", vectors)
    torch.save(model.state_dict(), f"{directory}/{WEIGHTS}")
    record = {} if index is None or index.kind == "exact" else export_index(vectors, index, Path(directory))
    inputs = {"user_tower.onnx": user_art.input_names, "item_tower.onnx": item_art.input_names}
    return _finish(
        directory,
        data,
        "retrieval",
        inputs,
        max_genres,
        metrics,
        scoring=model.scoring.to_dict(),
        index=record,
    )


def build_ranker_bundle(
    model: RankingModel,
    data: PreparedData,
    directory: str,
    max_genres: int,
    metrics: dict[str, float] | None = None,
) -> Manifest:
    rows = ranking_frame(data.train_events.head(EXAMPLE_ROWS).select("user_idx", "item_idx"), data)
    sparse = {**user_inputs(rows, data.history_len), **item_inputs(rows, max_genres)}
    art = export_ranker(
        model.eval(), dense_inputs(rows, model.dense_features), sparse, f"{directory}/ranker.onnx"
    )
    torch.save(model.state_dict(), f"{directory}/{WEIGHTS}")
    inputs = {"ranker.onnx": art.input_names}
    return _finish(directory, data, "ranker", inputs, max_genres, metrics, list(model.dense_features))


def _finish(
    directory: str,
    data: PreparedData,
    kind: BundleKind,
    inputs: dict[str, list[str]],
    max_genres: int,
    metrics: dict[str, float] | None,
    dense_features: list[str] | None = None,
    scoring: dict[str, object] | None = None,
    index: dict[str, object] | None = None,
) -> Manifest:
    """What every bundle carries besides its graphs: the id mapping and the manifest."""
    data.mapping.save(f"{directory}/id_mapping")
    manifest = Manifest(
        kind=kind,
        inputs=inputs,
        history_len=data.history_len,
        max_genres=max_genres,
        dense_features=dense_features or [],
        n_users=data.n_users,
        n_items=data.n_items,
        n_genres=data.n_genres,
        metrics=dict(metrics or {}),
        scoring=dict(scoring or {}),
        data_fingerprint=data.fingerprint(),
        index=dict(index or {}),
    )
    write_manifest(directory, manifest)
    return manifest
