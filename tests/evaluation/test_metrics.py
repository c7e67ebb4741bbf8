import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from rankforge.evaluation.metrics import (
    auc,
    csr_to_dense_mask,
    expected_calibration_error,
    gauc,
    lists_to_mask,
    logloss,
    pairs_to_mask,
    per_user_retrieval_metrics,
    ranking_metrics,
    retrieval_metrics,
    sigmoid,
)


def slow_retrieval(scores, relevant, exclude, k):
    """Loop reference: one user at a time, lists and sets."""
    out = {"recall": [], "ndcg": [], "hitrate": [], "mrr": []}
    for u in range(scores.shape[0]):
        rel = {i for i in range(scores.shape[1]) if relevant[u, i]}
        if not rel:
            continue
        candidates = [i for i in range(scores.shape[1]) if exclude is None or not exclude[u, i]]
        ranked = sorted(candidates, key=lambda i: -float(scores[u, i]))[:k]
        hits = [1.0 if i in rel else 0.0 for i in ranked]
        out["recall"].append(sum(hits) / len(rel))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
        out["ndcg"].append(dcg / idcg)
        out["hitrate"].append(float(any(hits)))
        first = next((r for r, h in enumerate(hits) if h), None)
        out["mrr"].append(0.0 if first is None else 1 / (first + 1))
    return {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}


def test_hand_computed_example() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.5, 0.1, 0.1, 0.1]])
    relevant = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    exclude = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = retrieval_metrics(scores, relevant, exclude, ks=(2,))
    # user 0: item 0 excluded -> top2 = [1, 2]: one of two relevant; user 1: top2 = [4, 3]: none
    assert got["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert got["ndcg@2"] == pytest.approx((1.0 / (1 + 1 / math.log2(3))) / 2)
    assert got["hitrate@2"] == pytest.approx(0.5)
    assert got["mrr@2"] == pytest.approx(0.5)
    got = retrieval_metrics(scores, relevant, exclude, ks=(5,))
    # K=5: user 0 ranks [1, 2, 3, 4] (+ excluded 0): hits at ranks 1 and 4; user 1: item 0 at rank 5
    assert got["recall@5"] == pytest.approx(1.0)
    ndcg_0 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert got["ndcg@5"] == pytest.approx((ndcg_0 + 1 / math.log2(6)) / 2)
    assert got["mrr@5"] == pytest.approx((1 + 1 / 5) / 2)
    # without the exclusion user 0's top 2 is [0, 1]: still one hit, now at rank 2
    got = retrieval_metrics(scores, relevant, ks=(2,))
    assert got["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / (1 + 1 / math.log2(3))) / 2)
    assert got["mrr@2"] == pytest.approx(0.5 / 2)


def test_excluded_items_never_count_as_hits_when_k_exceeds_the_candidates() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    relevant = torch.tensor([[True, True, False]])
    exclude = torch.tensor([[True, False, False]])  # a relevant item that is also a training item
    got = retrieval_metrics(scores, relevant, exclude, ks=(3,))
    assert got["recall@3"] == pytest.approx(0.5)  # item 0 is in the top 3 (at -inf) but not a hit
    assert got["mrr@3"] == pytest.approx(1.0)  # item 1 is the best-ranked non-excluded item


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_and_chunks_agree(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(40, 30, generator=g)
    relevant = torch.rand(40, 30, generator=g) < 0.1
    exclude = (torch.rand(40, 30, generator=g) < 0.2) & ~relevant
    whole = retrieval_metrics(scores, relevant, exclude, ks=(5, 10), batch_size=1000)
    chunked = retrieval_metrics(lambda users: scores[users], relevant, exclude, ks=(5, 10), batch_size=7)
    for k in (5, 10):
        ref = slow_retrieval(scores, relevant, exclude, k)
        for name, value in ref.items():
            assert whole[name] == pytest.approx(value), name
            assert chunked[name] == pytest.approx(value), name


def test_callable_scores_are_requested_in_chunks_of_evaluated_users() -> None:
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(25, 12, generator=g)
    relevant = torch.rand(25, 12, generator=g) < 0.15
    relevant[3] = False  # a user without held-out items is never scored
    calls: list[list[int]] = []

    def score(users: torch.Tensor) -> torch.Tensor:
        calls.append(users.tolist())
        return scores[users]

    chunked = retrieval_metrics(score, relevant, ks=(3,), batch_size=4)
    assert max(len(c) for c in calls) <= 4
    assert [u for c in calls for u in c] == torch.nonzero(relevant.any(1)).flatten().tolist()
    assert chunked == pytest.approx(retrieval_metrics(scores, relevant, ks=(3,)))


def test_sparse_masks_and_mask_builders_agree_with_dense() -> None:
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(30, 20, generator=g)
    relevant = torch.rand(30, 20, generator=g) < 0.1
    exclude = (torch.rand(30, 20, generator=g) < 0.3) & ~relevant
    dense = retrieval_metrics(scores, relevant, exclude, ks=(5,))
    csr_rel, csr_exc = sp.csr_array(relevant.numpy()), sp.coo_array(exclude.numpy())
    assert retrieval_metrics(scores, csr_rel, csr_exc, ks=(5,), batch_size=7) == pytest.approx(dense)
    assert torch.equal(csr_to_dense_mask(csr_rel.indptr, csr_rel.indices, 20), relevant)
    # duplicate entries and explicitly stored zeros: user 0 has item 2 (twice), user 1 has nothing
    messy = sp.coo_array((np.array([1, 1, 0]), (np.array([0, 0, 1]), np.array([2, 2, 0]))), shape=(2, 3))
    per_user = per_user_retrieval_metrics(torch.tensor([[0.0, 1.0, 2.0]] * 2), messy, ks=(1,))
    assert per_user["user"].tolist() == [0] and per_user["recall@1"].tolist() == [1.0]
    lists = [torch.nonzero(row).flatten().tolist() for row in relevant]
    assert torch.equal(lists_to_mask(lists, 20), relevant)
    assert lists_to_mask([[], []], 3).sum() == 0
    with pytest.raises(ValueError, match="indptr"):
        csr_to_dense_mask([0, 2], [1], 3)
    with pytest.raises(ValueError, match="outside"):
        lists_to_mask([[0, 3]], 3)


def test_per_user_values_and_errors() -> None:
    relevant = pairs_to_mask([0, 2], [1, 3], (3, 4))
    per_user = per_user_retrieval_metrics(torch.zeros(3, 4), relevant, ks=(1,))
    assert per_user["user"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="no user has a relevant"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(torch.zeros(2, 4), relevant)
    with pytest.raises(ValueError, match="outside"):
        pairs_to_mask([5], [0], (3, 4))
    with pytest.raises(ValueError, match="shaped like relevant"):
        retrieval_metrics(torch.zeros(3, 4), relevant, torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        retrieval_metrics(torch.zeros(3, 4), relevant.float())
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((3, 4), float("nan")), relevant)


def slow_auc(y, s):
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_auc_with_ties_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 10, 300).astype(float)  # many ties
    assert auc(y, s) == pytest.approx(slow_auc(y, s))
    assert auc([0, 1], [0.1, 0.9]) == 1.0 and auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        auc([1, 1], [0.2, 0.3])


def test_gauc_weights_users_by_impressions_and_skips_one_class_users() -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 8, 400)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + y * 0.5, 1)  # ties within users
    y[g == 7] = 1  # user 7: all positive, no AUC
    num = den = 0.0
    for user in np.unique(g):
        m = g == user
        if y[m].min() == y[m].max():
            continue
        num += slow_auc(y[m], s[m]) * m.sum()
        den += m.sum()
    assert gauc(y, s, g) == pytest.approx(num / den)
    shuffle = rng.permutation(400)  # order and the groups' type do not matter
    assert gauc(y[shuffle], s[shuffle], np.char.add("user-", g.astype(str))[shuffle]) == pytest.approx(
        num / den
    )
    with pytest.raises(ValueError, match="at least one group"):
        gauc([1, 0], [0.3, 0.2], [0, 1])


def test_logloss_and_ece_against_loops() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(size=500)
    y = (rng.uniform(size=500) < p).astype(float)
    ref = -np.mean([math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p, strict=True)])
    assert logloss(y, p) == pytest.approx(ref)
    bins = 10
    ece = 0.0
    for b in range(bins):
        m = [(yi, pi) for yi, pi in zip(y, p, strict=True) if min(int(pi * bins), bins - 1) == b]
        if m:
            ece += len(m) / len(y) * abs(np.mean([a for a, _ in m]) - np.mean([c for _, c in m]))
    assert expected_calibration_error(y, p, n_bins=bins) == pytest.approx(ece)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logloss([0, 1], [-0.1, 2.0])


def test_logits_give_the_same_metrics_as_their_probabilities() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3.0, size=300)
    y = (rng.uniform(size=300) < sigmoid(z)).astype(float)
    from_logits = ranking_metrics(y, z, groups=rng.integers(0, 5, 300), logits=True)
    from_probs = ranking_metrics(y, sigmoid(z), groups=rng.integers(0, 5, 300))
    for name in ("auc", "logloss", "ece"):
        assert from_logits[name] == pytest.approx(from_probs[name]), name
    # extreme logits stay finite and are clipped like probabilities
    assert logloss([1.0, 0.0], [-1000.0, 1000.0], logits=True) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert logloss([1.0, 0.0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_ranking_metrics_bundle() -> None:
    out = ranking_metrics([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], groups=[0, 0, 1, 1])
    assert out["auc"] == 1.0 and out["gauc"] == 1.0
    assert set(out) == {"auc", "logloss", "ece", "gauc"}
    with pytest.raises(ValueError, match="0 or 1"):
        ranking_metrics([0, 2], [0.1, 0.2])
