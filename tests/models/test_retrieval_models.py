"""Matrix factorisation and SimpleX on TorchRec tables, and the scoring function they carry,
against independent transcriptions of the papers' formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import padded_to_kjt, side_inputs
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.retrieval import merged_kjt
from rankforge.models.scoring import Scoring
from rankforge.models.simplex import SimpleX
from rankforge.serving.bundle import load_bundle
from rankforge.serving.export_bundle import build_retrieval_bundle
from rankforge.serving.onnx_export import run_onnx


def _tables(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k.split(".")[-2]: v for k, v in state.items() if "embedding_bags" in k}


def test_simplex_user_vector_is_the_papers_gated_aggregation() -> None:
    torch.manual_seed(0)
    model = SimpleX(n_users=5, n_items=9, embedding_dim=4, gamma=0.3, dropout=0.0).eval()
    users = {
        "user_id": torch.tensor([[0], [3], [4]]),
        "user_history": torch.tensor([[1, 2, -1], [-1, -1, -1], [8, 8, 5]]),
    }
    got = model.user_embedding(padded_to_kjt(users, model.user_keys))
    tables = _tables(model)
    e_user, e_item = tables["t_user_id"], tables["t_item_id"]
    v = model.history_map.weight
    expected = []
    for u, history in ((0, [1, 2]), (3, []), (4, [8, 8, 5])):
        mean = e_item[history].mean(0) if history else torch.zeros(4)  # empty history: e_u alone
        expected.append(0.3 * e_user[u] + 0.7 * (v @ mean))
    torch.testing.assert_close(got, torch.stack(expected))
    # history items are rows of the *item* table: one table, two features
    items = model.item_embedding(padded_to_kjt({"item_id": torch.tensor([[8], [1]])}, ["item_id"]))
    torch.testing.assert_close(items, e_item[[8, 1]])


def test_one_lookup_forward_equals_separate_sides() -> None:
    torch.manual_seed(1)
    model = SimpleX(n_users=6, n_items=10, embedding_dim=4, dropout=0.0).eval()
    users = padded_to_kjt(
        {"user_id": torch.tensor([[1], [2]]), "user_history": torch.tensor([[3, 4], [5, -1]])},
        model.user_keys,
    )
    items = padded_to_kjt({"item_id": torch.arange(7).reshape(-1, 1)}, ["item_id"])
    u, i = model(users, items)  # merged into one KJT of stride 7
    torch.testing.assert_close(u, model.user_embedding(users))
    torch.testing.assert_close(i, model.item_embedding(items))


def test_merged_kjt_pads_strides_and_fills_missing_keys() -> None:
    a = padded_to_kjt({"x": torch.tensor([[1], [2]])}, ["x"])
    b = padded_to_kjt({"y": torch.tensor([[5, 6], [7, -1], [8, -1]])}, ["y"])
    merged = merged_kjt([a, b], ["x", "z", "y"])
    assert merged.stride() == 3
    assert merged.keys() == ["x", "z", "y"]
    assert merged.lengths().tolist() == [1, 1, 0, 0, 0, 0, 2, 1, 1]
    assert merged.values().tolist() == [1, 2, 5, 6, 7, 8]


def test_scoring_maps_vectors_into_the_space_whose_inner_product_is_the_score() -> None:
    torch.manual_seed(2)
    user, item = torch.randn(3, 5), torch.randn(7, 5)
    cosine = Scoring("cosine", temperature=0.5)
    expected = torch.nn.functional.cosine_similarity(user[:, None], item[None], dim=-1) / 0.5
    torch.testing.assert_close(cosine.score(user, item), expected)
    torch.testing.assert_close(cosine.query(user) @ cosine.candidate(item).T, expected)
    torch.testing.assert_close(Scoring("dot").score(user, item), user @ item.T)
    with pytest.raises(ValueError, match="similarity"):
        Scoring("euclid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        Scoring("dot", 0.0)


@pytest.mark.parametrize("kind", ["mf", "simplex"])
def test_exported_bundle_scores_like_the_model(kind: str, small_data: PreparedData, tmp_path: Path) -> None:
    d = small_data
    torch.manual_seed(3)
    scoring = Scoring("cosine", 0.2)
    model = (
        MatrixFactorization(d.n_users, d.n_items, 8, scoring, init_std=0.1)
        if kind == "mf"
        else SimpleX(d.n_users, d.n_items, 8, scoring=scoring, init_std=0.1)
    ).eval()
    build_retrieval_bundle(model, d, str(tmp_path))
    bundle = load_bundle(tmp_path, expect="retrieval")
    assert bundle.manifest.scoring == {"similarity": "cosine", "temperature": 0.2}
    assert bundle.manifest.inputs["user_tower.onnx"] == model.user_keys
    users = side_inputs(d.user_features, d.inputs, "user")
    items = side_inputs(d.item_features, d.inputs, "item")
    feed = {k: users[k].numpy() for k in model.user_keys}
    queries = run_onnx(bundle.path("user_tower.onnx"), feed)
    expected = model.scoring.score(
        model.user_embedding(padded_to_kjt(users, model.user_keys)),
        model.item_embedding(padded_to_kjt(items, model.item_keys)),
    )
    np.testing.assert_allclose(queries @ bundle.item_embeddings().T, expected.detach().numpy(), atol=1e-5)
