"""Tests for LCRON and its NeuralSort helper (rankforge.training.objectives.lcron / soft_sort)."""

import math

import pytest
import torch

from rankforge.training.objectives.lcron import LCRONLoss
from rankforge.training.objectives.soft_sort import neural_sort, soft_topk_membership


def ref_neural_sort(scores: list[float], tau: float) -> list[list[float]]:
    """Grover et al. 2019 relaxation, written row by row."""
    n = len(scores)
    a_sum = [sum(abs(sj - sl) for sl in scores) for sj in scores]
    perm = []
    for i in range(1, n + 1):
        logits = [((n + 1 - 2 * i) * scores[j] - a_sum[j]) / tau for j in range(n)]
        top = max(logits)
        exps = [math.exp(x - top) for x in logits]
        perm.append([e / sum(exps) for e in exps])
    return perm


def ref_membership(perm: list[list[float]], k: int) -> list[float]:
    n = len(perm)
    return [sum(perm[i][j] for i in range(min(k, n))) / sum(perm[i][j] for i in range(n)) for j in range(n)]


def reference_lcron(ret, rank, labels, mask, k1, k2, tau, weights, eps=1e-6):
    """Slow per-list loop over the valid items of each list."""

    def nll(p):
        return -math.log((p + eps) / (1 + eps))

    sums = {"e2e": 0.0, "ret": 0.0, "rank": 0.0}
    lists = 0
    for b in range(ret.shape[0]):
        idx = [m for m in range(ret.shape[1]) if mask is None or bool(mask[b, m])]
        truth = [pos for pos, m in enumerate(idx) if labels[b, m] == 1]
        if not truth:
            continue
        lists += 1
        p_ret = ref_neural_sort([ret[b, m].item() for m in idx], tau)
        p_rank = ref_neural_sort([rank[b, m].item() for m in idx], tau)
        m1, m2 = ref_membership(p_ret, k1), ref_membership(p_rank, k2)
        r1, r2 = ref_membership(p_ret, len(truth)), ref_membership(p_rank, len(truth))
        sums["e2e"] += sum(nll(m1[j] * m2[j]) for j in truth) / len(truth)
        sums["ret"] += sum(nll(r1[j]) for j in truth) / len(truth)
        sums["rank"] += sum(nll(r2[j]) for j in truth) / len(truth)
    parts = {key: value / max(lists, 1) for key, value in sums.items()}
    total = weights[0] * parts["e2e"] + weights[1] * parts["ret"] + weights[2] * parts["rank"]
    return total, parts


def _inputs(batch=3, items=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ret = torch.randn(batch, items, generator=g, dtype=torch.float64)
    rank = torch.randn(batch, items, generator=g, dtype=torch.float64)
    labels = (torch.rand(batch, items, generator=g) > 0.6).long()
    labels[:, 0] = 1  # every list has ground truth
    mask = torch.ones(batch, items, dtype=torch.bool)
    mask[1, 4:] = False
    return ret, rank, labels, mask


# ----------------------------------------------------------------------------- NeuralSort


def test_neural_sort_matches_reference_and_rows_are_stochastic():
    ret, _, _, mask = _inputs()
    perm = neural_sort(ret, mask, temperature=0.7)
    for b in range(ret.shape[0]):
        valid = [m for m in range(ret.shape[1]) if mask[b, m]]
        want = ref_neural_sort([ret[b, m].item() for m in valid], 0.7)
        got = perm[b][: len(valid)][:, valid]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
        torch.testing.assert_close(perm[b, : len(valid)].sum(-1), torch.ones(len(valid), dtype=torch.float64))
    assert perm[1, 4:].abs().sum() == 0 and perm[1, :, 4:].abs().sum() == 0


def test_neural_sort_tends_to_the_hard_descending_sort():
    scores = torch.tensor([[0.3, 2.0, -1.0, 1.1]])
    perm = neural_sort(scores, torch.ones_like(scores, dtype=torch.bool), temperature=1e-3)
    hard = torch.nn.functional.one_hot(scores.argsort(dim=-1, descending=True), 4).to(perm.dtype)
    torch.testing.assert_close(perm, hard)
    member = soft_topk_membership(perm, torch.tensor([2]), torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(member, torch.tensor([[0.0, 1.0, 0.0, 1.0]]))


def test_membership_is_one_when_k_covers_the_list():
    ret, _, _, mask = _inputs()
    perm = neural_sort(ret, mask, temperature=1.0)
    member = soft_topk_membership(perm, torch.tensor([6, 4, 9]), mask)
    torch.testing.assert_close(member, mask.to(member.dtype))


# ----------------------------------------------------------------------------- LCRON


@pytest.mark.parametrize(("k1", "k2", "tau"), [(3, 2, 1.0), (4, 1, 0.5), (2, 2, 2.0)])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 0.0, 2.0)])
def test_matches_slow_reference(k1, k2, tau, weights):
    ret, rank, labels, mask = _inputs()
    loss_fn = LCRONLoss(
        k1,
        k2,
        temperature=tau,
        e2e_weight=weights[0],
        retrieval_aux_weight=weights[1],
        ranking_aux_weight=weights[2],
    )
    parts = loss_fn.forward_components(ret, rank, labels, mask)
    want, want_parts = reference_lcron(ret, rank, labels, mask, k1, k2, tau, weights)
    assert parts["loss"].item() == pytest.approx(want, rel=1e-9)
    assert parts["e2e"].item() == pytest.approx(want_parts["e2e"], rel=1e-9)
    assert parts["retrieval_aux"].item() == pytest.approx(want_parts["ret"], rel=1e-9)
    assert parts["ranking_aux"].item() == pytest.approx(want_parts["rank"], rel=1e-9)


def test_gradcheck_both_stages():
    ret, rank, labels, mask = _inputs(batch=2, items=5, seed=5)
    loss_fn = LCRONLoss(3, 2, temperature=0.8)
    inputs = (ret.clone().requires_grad_(), rank.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda r, s: loss_fn(r, s, labels, mask), inputs)


def test_both_stages_are_trained_as_one_network():
    ret, rank, labels, mask = _inputs()
    ret.requires_grad_()
    rank.requires_grad_()
    LCRONLoss(3, 2, retrieval_aux_weight=0.0, ranking_aux_weight=0.0)(ret, rank, labels, mask).backward()
    # The end-to-end term alone reaches both stages.
    assert ret.grad.abs().sum() > 0 and rank.grad.abs().sum() > 0


def test_loss_prefers_cascades_that_keep_the_ground_truth():
    labels = torch.tensor([[1, 0, 0, 0, 0]])
    good = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0]])
    bad = good.flip(-1)
    loss_fn = LCRONLoss(3, 1, temperature=0.1)
    assert loss_fn(good, good, labels) < 1e-3
    assert loss_fn(bad, good, labels) > 1.0 and loss_fn(good, bad, labels) > 1.0


def test_padding_is_ignored():
    ret, rank, labels, _ = _inputs()
    pad = torch.full((3, 3), 50.0, dtype=torch.float64)
    mask = torch.cat([torch.ones(3, 6, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    loss_fn = LCRONLoss(3, 2)
    padded = loss_fn(
        torch.cat([ret, pad], 1),
        torch.cat([rank, pad], 1),
        torch.cat([labels, torch.full((3, 3), 5)], 1),
        mask,
    )
    torch.testing.assert_close(padded, loss_fn(ret, rank, labels))


def test_lists_without_ground_truth_are_excluded_and_never_nan():
    ret, rank, labels, mask = _inputs()
    labels[2] = 0
    loss_fn = LCRONLoss(3, 2)
    with_empty = loss_fn(ret, rank, labels, mask)
    torch.testing.assert_close(with_empty, loss_fn(ret[:2], rank[:2], labels[:2], mask[:2]))

    ret.requires_grad_()
    none = loss_fn(ret, rank, torch.zeros_like(labels), mask)
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(ret.grad).all()
    empty_mask = loss_fn(ret.detach(), rank, labels, torch.zeros_like(mask))
    assert empty_mask.item() == 0.0


def test_all_items_ground_truth_gives_zero_auxiliary_losses():
    ret, rank, _, _ = _inputs()
    parts = LCRONLoss(3, 2).forward_components(ret, rank, torch.ones(3, 6))
    assert parts["retrieval_aux"].item() == pytest.approx(0.0, abs=1e-12)
    assert parts["ranking_aux"].item() == pytest.approx(0.0, abs=1e-12)
    assert parts["e2e"].item() > 0  # only 2 of 6 can survive the cascade


def test_tied_scores_are_finite():
    scores = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])
    loss = LCRONLoss(2, 1)(scores, scores, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    # All items tied: each is equally likely at every rank, so m_k = k / n.
    e2e = -math.log((2 / 4 * 1 / 4 + 1e-6) / (1 + 1e-6))
    assert LCRONLoss(2, 1).forward_components(scores, scores, labels)["e2e"].item() == pytest.approx(e2e)


def test_components_attribute_and_uncertainty_weighting():
    ret, rank, labels, mask = _inputs()
    loss_fn = LCRONLoss(3, 2, uncertainty_weighting=True)
    loss = loss_fn(ret.float(), rank.float(), labels, mask)
    assert set(loss_fn.components) == {"loss", "e2e", "retrieval_aux", "ranking_aux"}
    c = loss_fn.components
    # sigma = 1 at initialisation: each auxiliary term is halved and log(sigma) = 0.
    torch.testing.assert_close(loss.detach(), c["e2e"] + 0.5 * c["retrieval_aux"] + 0.5 * c["ranking_aux"])
    loss.backward()
    assert loss_fn.log_sigma_retrieval.grad is not None and loss_fn.log_sigma_ranking.grad is not None


def test_realistic_candidate_list_backprops():
    torch.manual_seed(0)
    ret = torch.randn(64, 100, requires_grad=True)
    rank = torch.randn(64, 100, requires_grad=True)
    labels = (torch.rand(64, 100) < 0.1).long()
    loss = LCRONLoss(retrieval_k=30, ranking_k=10, temperature=1.0)(ret, rank, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ret.grad).all() and torch.isfinite(rank.grad).all()


def test_wrong_inputs_raise_naming_the_tensor():
    ret, rank, labels, mask = _inputs()
    loss_fn = LCRONLoss(3, 2)
    with pytest.raises(ValueError, match=r"ranking_scores: expected shape \[B=3, M=6\], got \(3, 5\)"):
        loss_fn(ret, rank[:, :5], labels, mask)
    with pytest.raises(ValueError, match="labels: expected shape"):
        loss_fn(ret, rank, labels[:2], mask)
    with pytest.raises(ValueError, match="mask: expected a bool mask"):
        loss_fn(ret, rank, labels, mask.float())
    with pytest.raises(ValueError, match="ranking_scores: expected dtype"):
        loss_fn(ret, rank.float(), labels, mask)
    with pytest.raises(ValueError, match="retrieval_scores: expected shape"):
        loss_fn(ret[0], rank, labels, mask)
    with pytest.raises(ValueError, match="labels: expected binary"):
        loss_fn(ret, rank, labels * 3, mask)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retrieval_k": 2, "ranking_k": 3},
        {"retrieval_k": 0, "ranking_k": 0},
        {"retrieval_k": 3, "ranking_k": 2, "temperature": 0.0},
        {"retrieval_k": 3, "ranking_k": 2, "ranking_aux_weight": -1.0},
        {"retrieval_k": 3.5, "ranking_k": 2},
    ],
)
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        LCRONLoss(**kwargs)
