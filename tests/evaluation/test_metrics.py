import math

import numpy as np
import pytest
import torch

from rankforge.evaluation.metrics import (
    auc,
    expected_calibration_error,
    gauc,
    logloss,
    pairs_to_mask,
    per_user_retrieval_metrics,
    ranking_metrics,
    retrieval_metrics,
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
    s = rng.normal(size=400) + y * 0.5
    g[g == 7] = 7
    y[g == 7] = 1  # user 7: all positive, no AUC
    num = den = 0.0
    for user in np.unique(g):
        m = g == user
        if y[m].min() == y[m].max():
            continue
        num += slow_auc(y[m], s[m]) * m.sum()
        den += m.sum()
    assert gauc(y, s, g) == pytest.approx(num / den)


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


def test_ranking_metrics_bundle() -> None:
    out = ranking_metrics([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], groups=[0, 0, 1, 1])
    assert out["auc"] == 1.0 and out["gauc"] == 1.0
    assert set(out) == {"auc", "logloss", "ece", "gauc"}
    with pytest.raises(ValueError, match="0 or 1"):
        ranking_metrics([0, 2], [0.1, 0.2])
