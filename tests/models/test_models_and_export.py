from pathlib import Path

import numpy as np
import pytest
import torch

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_ranker_bundle, build_retrieval_bundle, ranking_frame
from rankforge.bundles.onnx_export import max_abs_difference, run_onnx
from rankforge.features.aggregates import DENSE_FEATURES
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import dense_inputs, pad_lists, padded_to_kjt, side_inputs, sparse_features
from rankforge.models.portable import RankerTwin, TowerTwin
from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower

MAX_GENRES = 8


def two_tower(d: PreparedData) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(sparse_features(d.inputs, "user"), sparse_features(d.inputs, "item"))


def ranker(d: PreparedData) -> RankingModel:
    torch.manual_seed(0)
    sparse = sparse_features(d.inputs, "user") + sparse_features(d.inputs, "item")
    return RankingModel(sparse, DENSE_FEATURES)


def test_pad_lists_keeps_most_recent_tail() -> None:
    got = pad_lists([[1, 2, 3, 4], [], [7]], 3)
    assert got.tolist() == [[2, 3, 4], [-1, -1, -1], [7, -1, -1]]


def test_padded_to_kjt_round_trip() -> None:
    kjt = padded_to_kjt({"a": torch.tensor([[1, -1], [2, 3]]), "b": torch.tensor([[4], [-1]])}, ["a", "b"])
    assert kjt.keys() == ["a", "b"]
    assert kjt.lengths().tolist() == [1, 2, 1, 0]
    assert kjt.values().tolist() == [1, 2, 3, 4]


def test_padded_to_kjt_errors() -> None:
    with pytest.raises(ValueError, match="missing sparse feature"):
        padded_to_kjt({"a": torch.zeros(2, 1, dtype=torch.long)}, ["a", "b"])
    with pytest.raises(ValueError, match="batch size"):
        padded_to_kjt(
            {"a": torch.zeros(2, 1, dtype=torch.long), "b": torch.zeros(3, 1, dtype=torch.long)}, ["a", "b"]
        )


def test_twins_match_torchrec_models(small_data: PreparedData) -> None:
    d = small_data
    model = two_tower(d).eval()
    users = side_inputs(d.user_features, d.inputs, "user")
    items = side_inputs(d.item_features, d.inputs, "item")
    twin_u, twin_i = TowerTwin(model, "user"), TowerTwin(model, "item")
    torch.testing.assert_close(
        twin_u(*users.values()), model.user_embedding(padded_to_kjt(users, model.user_keys))
    )
    torch.testing.assert_close(
        twin_i(*items.values()), model.item_embedding(padded_to_kjt(items, model.item_keys))
    )

    rank = ranker(d).eval()
    rows = ranking_frame(d.train_events.select("user_idx", "item_idx"), d)
    sparse = {**side_inputs(rows, d.inputs, "user"), **side_inputs(rows, d.inputs, "item")}
    dense = dense_inputs(rows, DENSE_FEATURES)
    expected = rank(dense, padded_to_kjt(sparse, rank.sparse_keys))
    torch.testing.assert_close(RankerTwin(rank)(dense, *sparse.values()), expected)


def test_trained_two_tower_exports_to_onnx_with_same_outputs(
    small_data: PreparedData, tmp_path: Path
) -> None:
    d = small_data
    model = two_tower(d)
    # a few steps of in-batch softmax so the exported weights are trained ones, not the init
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ex = d.retrieval_examples.join(d.item_features.select("item_idx", "item_genres"), on="item_idx")
    for step in range(5):
        batch = ex.slice(step * 64, 64)
        u, i = model(
            padded_to_kjt(side_inputs(batch, d.inputs, "user"), model.user_keys),
            padded_to_kjt(side_inputs(batch, d.inputs, "item"), model.item_keys),
        )
        loss = torch.nn.functional.cross_entropy(u @ i.T, torch.arange(len(batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = model.user_ebc.state_dict()["embedding_bags.t_user_id.weight"].clone()
    manifest = build_retrieval_bundle(model, d, str(tmp_path))
    bundle = load_bundle(tmp_path, expect="retrieval")
    assert manifest.inputs["user_tower.onnx"] == ["user_id", "user_history"]
    model.eval()
    users = side_inputs(d.user_features, d.inputs, "user")
    ref = model.user_embedding(padded_to_kjt(users, model.user_keys))
    assert max_abs_difference(bundle.path("user_tower.onnx"), ref, users) < 1e-5
    items = side_inputs(d.item_features, d.inputs, "item")
    item_ref = model.item_embedding(padded_to_kjt(items, model.item_keys))
    assert max_abs_difference(bundle.path("item_tower.onnx"), item_ref, items) < 1e-5
    np.testing.assert_allclose(bundle.item_embeddings(), item_ref.detach().numpy(), atol=1e-6)
    assert torch.equal(before, model.user_ebc.state_dict()["embedding_bags.t_user_id.weight"])


def test_ranker_exports_to_onnx_with_same_outputs(small_data: PreparedData, tmp_path: Path) -> None:
    d = small_data
    model = ranker(d).eval()
    build_ranker_bundle(model, d, str(tmp_path))
    bundle = load_bundle(tmp_path, expect="ranker")
    rows = ranking_frame(d.test_events.select("user_idx", "item_idx"), d)
    sparse = {**side_inputs(rows, d.inputs, "user"), **side_inputs(rows, d.inputs, "item")}
    dense = dense_inputs(rows, DENSE_FEATURES)
    ref = model(dense, padded_to_kjt(sparse, model.sparse_keys))
    assert max_abs_difference(bundle.path("ranker.onnx"), ref, {"dense": dense, **sparse}) < 1e-5
    # batch size is dynamic: one row works as well as many
    one = run_onnx(
        bundle.path("ranker.onnx"),
        {"dense": dense[:1].numpy(), **{k: v[:1].numpy() for k, v in sparse.items()}},
    )
    assert one.shape == (1,)
