"""Turn trained torch models plus the feature pipeline's tables into servable bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rankforge.bundles.ann_index import IndexConfig, ServedRecallCheck, export_index
from rankforge.bundles.bundle import VOCABULARIES, WEIGHTS, BundleKind, Manifest, file_digests, write_manifest
from rankforge.bundles.onnx_export import export_ranker, export_retrieval_towers
from rankforge.features.pipeline import PreparedData, ranking_frame
from rankforge.models.inputs import dense_inputs, padded_to_kjt, side_inputs
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel

EXAMPLE_ROWS = 4


@torch.no_grad()
def item_embedding_matrix(model: RetrievalModel, data: PreparedData, batch_size: int = 4096) -> np.ndarray:
    """Every item's vector ``[n_items, d]`` in item-index order and in the model's scoring space
    (unit vectors for a cosine model), computed once for serving."""
    model.eval()
    chunks = []
    for start in range(0, data.item_features.height, batch_size):
        batch = side_inputs(data.item_features.slice(start, batch_size), data.inputs, "item")
        chunks.append(model.candidate(padded_to_kjt(batch, model.item_keys)))
    return torch.cat(chunks).float().numpy()


def build_retrieval_bundle(
    model: RetrievalModel,
    data: PreparedData,
    directory: str,
    metrics: dict[str, float] | None = None,
    index: IndexConfig | None = None,
    served_recall: ServedRecallCheck | None = None,
) -> Manifest:
    """Export a retrieval model's towers, item vectors and (``index``) its ANN index, measured
    by ``served_recall`` when given (see :func:`rankforge.bundles.ann_index.export_index`)."""
    users = side_inputs(data.user_features.head(EXAMPLE_ROWS), data.inputs, "user")
    items = side_inputs(data.item_features.head(EXAMPLE_ROWS), data.inputs, "item")
    user_art, item_art = export_retrieval_towers(model.eval(), users, items, directory)
    vectors = item_embedding_matrix(model, data)
    np.save(f"{directory}/item_embeddings.npy", vectors)
    torch.save(model.state_dict(), f"{directory}/{WEIGHTS}")
    record = (
        {}
        if index is None or index.kind == "exact"
        else export_index(vectors, index, Path(directory), served_recall)
    )
    inputs = {"user_tower.onnx": user_art.input_names, "item_tower.onnx": item_art.input_names}
    return _finish(
        directory,
        data,
        "retrieval",
        inputs,
        metrics,
        scoring=model.scoring.to_dict(),
        index=record,
    )


def build_ranker_bundle(
    model: RankingModel,
    data: PreparedData,
    directory: str,
    metrics: dict[str, float] | None = None,
) -> Manifest:
    pairs = data.train_events.head(EXAMPLE_ROWS).select("user_idx", "item_idx", *data.inputs.context_names)
    rows = ranking_frame(pairs, data)
    sparse = {**side_inputs(rows, data.inputs, "user"), **side_inputs(rows, data.inputs, "item")}
    art = export_ranker(
        model.eval(), dense_inputs(rows, model.dense_features), sparse, f"{directory}/ranker.onnx"
    )
    torch.save(model.state_dict(), f"{directory}/{WEIGHTS}")
    inputs = {"ranker.onnx": art.input_names}
    return _finish(directory, data, "ranker", inputs, metrics, list(model.dense_features))


def _finish(
    directory: str,
    data: PreparedData,
    kind: BundleKind,
    inputs: dict[str, list[str]],
    metrics: dict[str, float] | None,
    dense_features: list[str] | None = None,
    scoring: dict[str, object] | None = None,
    index: dict[str, object] | None = None,
) -> Manifest:
    """What every bundle carries besides its graphs: the id mapping and the manifest."""
    data.mapping.save(f"{directory}/id_mapping")
    for name, vocab in data.vocabularies.items():  # value -> index of each declared feature
        Path(directory, VOCABULARIES).mkdir(parents=True, exist_ok=True)
        vocab.write_parquet(Path(directory, VOCABULARIES, f"{name}.parquet"))
    manifest = Manifest(
        kind=kind,
        inputs=inputs,
        history_len=data.history_len,
        layout=data.inputs.to_dict(),
        dense_features=dense_features or [],
        n_users=data.n_users,
        n_items=data.n_items,
        vocabularies=data.vocabulary_digests(),
        metrics=dict(metrics or {}),
        scoring=dict(scoring or {}),
        data_fingerprint=data.fingerprint(),
        index=dict(index or {}),
        files=file_digests(directory),
        data_config=data.config.portable() if data.config is not None else {},
    )
    write_manifest(directory, manifest)
    return manifest
