"""Batch iterators: rank slices partition the global batch, negatives follow their distribution."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
import torch

from rankforge.errors import DataError
from rankforge.features.pipeline import PreparedData
from rankforge.models.inputs import side_inputs
from rankforge.training.batches import (
    FeatureTables,
    NegativeSampler,
    RankingBatches,
    RetrievalBatches,
    UserItemPairs,
)
from rankforge.training.reference import ItemRateReference

MAX_GENRES = 8


@pytest.fixture(scope="module")
def tables(small_data: PreparedData) -> FeatureTables:
    return FeatureTables.build(small_data)


def test_feature_tables_match_the_model_input_helpers(
    small_data: PreparedData, tables: FeatureTables
) -> None:
    d = small_data
    users = torch.tensor([3, 0, 7])
    expected_u = side_inputs(d.user_features[users.tolist()], d.inputs, "user")
    for key, value in tables.users(users).items():
        assert torch.equal(value, expected_u[key]), key
    items = torch.tensor([5, 5, 1])
    expected_i = side_inputs(d.item_features[items.tolist()], d.inputs, "item")
    for key, value in tables.items(items).items():
        assert torch.equal(value, expected_i[key]), key


def test_popularity_sampler_follows_item_counts(tables: FeatureTables) -> None:
    counts = torch.tensor([0.0, 9.0, 99.0, 0.0])
    sampler = NegativeSampler(counts, "popularity", popularity_power=1.0)
    draws = sampler.sample((20_000,), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    expected = (counts + 1) / (counts + 1).sum()
    torch.testing.assert_close(freq, expected.double(), atol=0.01, rtol=0)
    uniform = NegativeSampler(counts, "uniform").sample((4, 5), torch.Generator().manual_seed(0))
    assert uniform.shape == (4, 5) and uniform.min() >= 0 and uniform.max() < 4
    with pytest.raises(ValueError, match="distribution"):
        NegativeSampler(counts, "zipf")  # type: ignore[arg-type]


def test_mixed_sampler_draws_its_uniform_share_from_the_whole_catalogue() -> None:
    counts = torch.zeros(50)
    counts[7] = 1e6  # popularity draws item 7 almost always
    sampler = NegativeSampler(counts, "popularity", popularity_power=1.0, uniform_share=0.25)
    draws = sampler.sample((4000, 8), torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 8)
    weighted, uniform = draws[:, :6], draws[:, 6:]
    assert (weighted == 7).double().mean() > 0.99
    freq = torch.bincount(uniform.reshape(-1), minlength=50).double() / uniform.numel()
    torch.testing.assert_close(freq, torch.full((50,), 1 / 50, dtype=torch.float64), atol=0.006, rtol=0)
    with pytest.raises(ValueError, match="uniform_share"):
        NegativeSampler(counts, "popularity", uniform_share=1.5)


def _retrieval(d: PreparedData, t: FeatureTables, rank: int, world: int, shared: bool) -> RetrievalBatches:
    sampler = NegativeSampler(t.item_events, "popularity")
    return RetrievalBatches(d, t, sampler, 5, shared, batch_size=100, rank=rank, world_size=world, seed=7)


@pytest.mark.parametrize("shared", [False, True])
def test_retrieval_rank_slices_partition_the_global_batch(
    small_data: PreparedData, tables: FeatureTables, shared: bool
) -> None:
    single = list(_retrieval(small_data, tables, 0, 1, shared))
    halves = [list(_retrieval(small_data, tables, r, 2, shared)) for r in (0, 1)]
    assert (
        len(single) == len(halves[0]) == len(halves[1]) == len(_retrieval(small_data, tables, 0, 2, shared))
    )
    n_examples = small_data.retrieval_examples.height
    assert sum(b.size for b in single) == n_examples  # one process sees every example once
    for whole, a, b in zip(single, *halves, strict=True):
        assert a.size == b.size
        if whole.size % 2 == 0:  # same draws, split: users and negatives line up
            users = torch.cat([a.user["user_id"].values(), b.user["user_id"].values()])
            assert torch.equal(users, whole.user["user_id"].values())
            assert torch.equal(torch.cat([a.neg_mask, b.neg_mask]), whole.neg_mask)
    first = single[0]
    positives, negatives = _scored_items(first)
    assert negatives.shape == ((5,) if shared else (first.size, 5))
    hits = negatives.unsqueeze(0) == positives.view(-1, 1) if shared else negatives == positives.view(-1, 1)
    assert torch.equal(first.neg_mask, ~hits.reshape(first.neg_mask.shape))
    if not shared:  # each distinct candidate is looked up once
        ids = first.items["item_id"].values()
        assert first.items.stride() == len(ids) == len(torch.unique(ids))


def _scored_items(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives [b], negatives [b, N] per example or [N] shared) as item ids: what each score of
    the batch reads."""
    ids = batch.items["item_id"].values()
    if batch.pattern is None:
        return ids[: batch.size], ids[batch.size :]
    scored = ids[batch.pattern.cols].view(batch.size, -1)
    return scored[:, 0], scored[:, 1:]


def test_retrieval_positives_and_histories_come_from_the_examples(
    small_data: PreparedData, tables: FeatureTables
) -> None:
    batch = next(iter(_retrieval(small_data, tables, 0, 1, False)))
    ex = small_data.retrieval_examples
    users = batch.user["user_id"].values()
    positives, _ = _scored_items(batch)
    pairs = set(zip(ex["user_idx"].to_list(), ex["item_idx"].to_list(), strict=True))
    assert all((u, i) in pairs for u, i in zip(users.tolist(), positives.tolist(), strict=True))


def test_ranking_negatives_are_unseen_and_labels_are_kept(
    small_data: PreparedData, tables: FeatureTables
) -> None:
    d = small_data
    sampler = NegativeSampler(tables.item_events, "uniform")
    reference = ItemRateReference(tables.item_pos_rate)
    batches = RankingBatches(d, tables, sampler, 3, batch_size=200, seed=1, reference=reference)
    seen = set(zip(d.train_events["user_idx"].to_list(), d.train_events["item_idx"].to_list(), strict=True))
    labelled = dict(
        zip(
            zip(d.train_events["user_idx"].to_list(), d.train_events["item_idx"].to_list(), strict=True),
            d.train_events["label"].to_list(),
            strict=True,
        )
    )
    n_events = n_negatives = 0
    for batch in batches:
        users = batch.sparse["user_id"].values().tolist()
        items = batch.sparse["item_id"].values().tolist()
        for u, i, y in zip(users, items, batch.labels.tolist(), strict=True):
            if (u, i) in seen:
                n_events += 1
                assert y == labelled[(u, i)]
            else:
                n_negatives += 1
                assert y == 0.0
        expected_dense = tables.dense(torch.tensor(users), torch.tensor(items))
        assert torch.equal(batch.dense, expected_dense)
        rate = tables.item_pos_rate[torch.tensor(items)]
        torch.testing.assert_close(torch.sigmoid(batch.reference_logits), rate)
        assert batch.reference_mask.all()
    assert n_events == d.train_events.height  # every labelled event once per epoch
    assert 0 < n_negatives <= 3 * n_events


def test_ranking_batches_without_negatives_or_reference(
    small_data: PreparedData, tables: FeatureTables
) -> None:
    sampler = NegativeSampler(tables.item_events, "popularity")
    batches = RankingBatches(small_data, tables, sampler, 0, batch_size=256, seed=1)
    rows = 0
    for batch in batches:
        rows += batch.size
        assert not batch.reference_mask.any() and not batch.reference_logits.any()
    assert rows == small_data.train_events.height  # the logged events alone


def test_bad_inputs_fail_clearly(small_data: PreparedData, tables: FeatureTables) -> None:
    sampler = NegativeSampler(tables.item_events, "uniform")
    with pytest.raises(DataError, match="smaller than the 4 processes"):
        RetrievalBatches(small_data, tables, sampler, 2, False, batch_size=2, world_size=4)
    broken = small_data.item_features.filter(pl.col("item_idx") != 3)
    with pytest.raises(DataError, match="every index"):
        FeatureTables.build(dataclasses.replace(small_data, item_features=broken))


def test_membership_by_binary_search_agrees_with_isin() -> None:
    from rankforge.training.batches import _in_sorted

    g = torch.Generator().manual_seed(0)
    keys = torch.unique(torch.randint(0, 1000, (300,), generator=g))
    values = torch.cat([torch.randint(-5, 1010, (500,), generator=g), keys[:10]])
    assert torch.equal(_in_sorted(values, keys), torch.isin(values, keys))
    assert not _in_sorted(values, keys[:0]).any()


def test_user_positives_are_drawn_again(small_data: PreparedData, tables: FeatureTables) -> None:
    """exclude = "user_positives" (the PSL paper's sampler): no negative is an item its user has a
    training positive with, and the draws still split across ranks like one global batch."""
    d = small_data
    sampler = NegativeSampler(tables.item_events, "uniform")

    def batches(rank: int, world: int) -> list:
        return list(
            RetrievalBatches(
                d, tables, sampler, 30, False, 100, rank, world, seed=5, exclude="user_positives"
            )
        )

    positives = {
        (u, i)
        for u, i, label in d.train_events.select("user_idx", "item_idx", "label").iter_rows()
        if label > 0
    }
    single = batches(0, 1)
    for batch in single:
        users = batch.user["user_id"].values()
        _, negatives = _scored_items(batch)
        assert not any(
            (u, i) in positives
            for u, row in zip(users.tolist(), negatives.tolist(), strict=True)
            for i in row
        )
        assert bool(batch.neg_mask.all())
    halves = [batches(r, 2) for r in (0, 1)]
    whole, a, b = single[0], halves[0][0], halves[1][0]
    assert torch.equal(torch.cat([_scored_items(a)[1], _scored_items(b)[1]]), _scored_items(whole)[1])


def test_user_item_pairs_bitset_and_sorted_keys_agree_with_a_set() -> None:
    """Both representations of the (user, item) pair set answer membership like a Python set."""
    g = torch.Generator().manual_seed(3)
    users, items = torch.randint(0, 40, (300,), generator=g), torch.randint(0, 70, (300,), generator=g)
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    q_users, q_items = torch.randint(0, 40, (25,), generator=g), torch.randint(0, 70, (25, 60), generator=g)
    q_items[:5, 0] = items[:5]
    q_users[:5] = users[:5]
    expected = torch.tensor(
        [[(u, i) in pairs for i in row] for u, row in zip(q_users.tolist(), q_items.tolist(), strict=True)]
    )
    bitset = UserItemPairs(users, items, 40, 70)
    sorted_keys = UserItemPairs(users, items, 40, 70, max_bytes=0)
    assert bitset.bits is not None and sorted_keys.sorted_keys is not None
    assert expected[:5, 0].all()
    assert torch.equal(bitset.contains(q_users, q_items), expected)
    assert torch.equal(sorted_keys.contains(q_users, q_items), expected)
