"""Retrieval bundles written by hand (numpy + onnx), so tests know the right answer in advance.

The user tower is a lookup table (``vector = table[user_id]``), the item embeddings a matrix: a
"perfect" bundle puts each user's held-out items at score 1 and everything else at 0, a random one
draws both from a seeded normal. No torch export is involved, so they build in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rankforge.bundles.bundle import Manifest, write_manifest
from rankforge.features.pipeline import PreparedData


def _lookup_graph(table: np.ndarray, id_input: str, list_input: str, path: Path) -> None:
    """``vector[n, d] = table[ids[:, 0]]``; the list input is declared (as served) but unused."""
    inputs = [
        helper.make_tensor_value_info(id_input, TensorProto.INT64, ["batch", 1]),
        helper.make_tensor_value_info(list_input, TensorProto.INT64, ["batch", None]),
    ]
    output = helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["batch", table.shape[1]])
    nodes = [
        helper.make_node("Squeeze", [id_input, "axis"], ["ids"]),
        helper.make_node("Gather", ["table", "ids"], ["vector"], axis=0),
    ]
    initializers = [
        numpy_helper.from_array(table.astype(np.float32), "table"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
    ]
    graph = helper.make_graph(nodes, "lookup", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_retrieval_bundle(
    data: PreparedData, directory: Path, user_table: np.ndarray, item_embeddings: np.ndarray
) -> Path:
    """A loadable retrieval bundle in ``data``'s id space from the two matrices."""
    directory.mkdir(parents=True, exist_ok=True)
    _lookup_graph(user_table, "user_id", "user_history", directory / "user_tower.onnx")
    _lookup_graph(item_embeddings, "item_id", "item_genres", directory / "item_tower.onnx")
    np.save(directory / "item_embeddings.npy", item_embeddings.astype(np.float32))
    data.mapping.save(directory / "id_mapping")
    manifest = Manifest(
        kind="retrieval",
        inputs={
            "user_tower.onnx": ["user_id", "user_history"],
            "item_tower.onnx": ["item_id", "item_genres"],
        },
        history_len=data.history_len,
        layout=data.inputs.to_dict(),
        n_users=data.n_users,
        n_items=data.n_items,
        vocabularies=data.vocabulary_digests(),
        data_fingerprint=data.fingerprint(),
    )
    write_manifest(directory, manifest)
    return directory


def perfect_retrieval_bundle(data: PreparedData, directory: Path) -> Path:
    """Scores 1 for exactly the user's held-out positives, 0 for every other item."""
    table = np.zeros((data.n_users, data.n_items), dtype=np.float32)
    held_out = data.test_positives()
    table[held_out["user_idx"].to_numpy(), held_out["item_idx"].to_numpy()] = 1.0
    return write_retrieval_bundle(data, directory, table, np.eye(data.n_items, dtype=np.float32))


def random_retrieval_bundle(data: PreparedData, directory: Path, seed: int = 0, dim: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((data.n_users, dim))
    return write_retrieval_bundle(data, directory, users, rng.standard_normal((data.n_items, dim)))


def worst_retrieval_bundle(data: PreparedData, directory: Path) -> Path:
    """Scores -1 for exactly the user's held-out positives, 0 for every other item: never finds one."""
    table = np.zeros((data.n_users, data.n_items), dtype=np.float32)
    held_out = data.test_positives()
    table[held_out["user_idx"].to_numpy(), held_out["item_idx"].to_numpy()] = -1.0
    return write_retrieval_bundle(data, directory, table, np.eye(data.n_items, dtype=np.float32))
