"""Matrix factorisation and SimpleX on TorchRec tables, and the scoring function they carry,
against independent transcriptions of the papers' formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.export import build_retrieval_bundle
from rankforge.bundles.onnx_export import run_onnx
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import padded_to_kjt, side_inputs
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.retrieval import merged_kjt
from rankforge.models.scoring import Scoring
from rankforge.models.simplex import SimpleX


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


def _authors_user_attention(uid, sequence, w_k, b_k, pad_to):
    """An independent transcription of the SimpleX authors' ``BehaviorAggregator.user_attention``
    (reczoo/RecZoo) on one user: the history padded with zero vectors to ``pad_to`` (0: no
    padding, the paper's masked softmax), padded logits set to 0 and *kept* in the softmax."""
    if pad_to > len(sequence):
        sequence = sequence + [torch.zeros_like(uid)] * (pad_to - len(sequence))
    if not sequence:
        return torch.zeros_like(uid)
    seq = torch.stack(sequence)  # L x d
    key = torch.tanh(seq @ w_k.T + b_k)
    mask = seq.sum(dim=-1) == 0
    attention = (key @ uid).masked_fill(mask, 0)
    e = torch.exp(attention)
    weights = e / (e.sum() + 1e-9)
    return weights @ seq


@pytest.mark.parametrize("pad_to", [0, 5])
@pytest.mark.parametrize("history_table", ["shared", "separate"])
def test_simplex_user_attention_is_the_authors_aggregator(pad_to: int, history_table: str) -> None:
    torch.manual_seed(5)
    model = SimpleX(
        n_users=5,
        n_items=9,
        embedding_dim=4,
        gamma=0.8,
        dropout=0.0,
        init_std=0.5,
        aggregator="user_attention",
        history_table=history_table,
        attention_pad_length=pad_to,
    ).eval()
    histories = ([1, 2], [], [8, 8, 5], [3, 4, 6, 7])
    users = {
        "user_id": torch.tensor([[0], [3], [4], [2]]),
        "user_history": torch.tensor([h + [-1] * (4 - len(h)) for h in histories]),
    }
    got = model.user_embedding(padded_to_kjt(users, model.user_keys))
    tables = _tables(model)
    history_rows = tables["t_user_history" if history_table == "separate" else "t_item_id"]
    if history_table == "separate":
        assert not torch.equal(history_rows, tables["t_item_id"])
    w_k, b_k = model.attention_key[0].weight, model.attention_key[0].bias
    expected = []
    for u, history in zip((0, 3, 4, 2), histories, strict=True):
        e_u = tables["t_user_id"][u]
        pooled = _authors_user_attention(e_u, [history_rows[j] for j in history], w_k, b_k, pad_to)
        expected.append(0.8 * e_u + 0.2 * (model.history_map.weight @ pooled))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=1e-5)
    # the export twin over padded ids computes the same vectors
    twin = model.portable("user")
    torch.testing.assert_close(twin(users["user_id"], users["user_history"]), got, atol=1e-6, rtol=1e-5)


def test_simplex_with_gamma_one_reads_no_history() -> None:
    model = SimpleX(n_users=3, n_items=4, embedding_dim=2, gamma=1.0, dropout=0.0)
    assert model.user_keys == ["user_id"]


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


@pytest.mark.parametrize("kind", ["mf", "simplex", "simplex_attention"])
def test_exported_bundle_scores_like_the_model(kind: str, small_data: PreparedData, tmp_path: Path) -> None:
    d = small_data
    torch.manual_seed(3)
    scoring = Scoring("cosine", 0.2)
    if kind == "mf":
        model = MatrixFactorization(d.n_users, d.n_items, 8, scoring, init_std=0.1)
    elif kind == "simplex":
        model = SimpleX(d.n_users, d.n_items, 8, scoring=scoring, init_std=0.1)
    else:
        model = SimpleX(
            d.n_users,
            d.n_items,
            8,
            gamma=0.7,
            scoring=scoring,
            init_std=0.1,
            aggregator="user_attention",
            history_table="separate",
            attention_pad_length=d.history_len + 3,
        )
    model = model.eval()
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
