"""LCRON (rankforge.training.objectives.lcron) against a transcription of the authors' code.

``official_lcron`` below is written from github.com/kwai/LCRON
(``deep_components/loss/two_stage/lcron.py``: ``JointUltraLoss``, ``LsingleLoss``,
``LcronLossModel``; ``sorting.py``: ``neuralsort``), matrix by matrix as the authors wrote it, on
full lists (their data: B lists of N items, ``gt_num`` ground-truth items each).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rankforge.training.objectives.lcron import LCRONLoss
from rankforge.training.objectives.soft_sort import neural_sort, top_k_shares


def official_neuralsort(s: torch.Tensor, tau: float) -> torch.Tensor:
    s = s.unsqueeze(-1)
    a_s = torch.abs(s - s.transpose(1, 2))
    n = s.size(1)
    one = torch.ones((n, 1), dtype=s.dtype)
    b = torch.einsum("mij,jk->mik", a_s, one @ one.T)
    k = torch.arange(n) + 1
    c = torch.einsum("mij,jk->mik", s, (n + 1 - 2 * k).to(s.dtype).unsqueeze(0))
    p = (c - b).transpose(1, 2)
    return F.softmax(p / tau, dim=-1)


def official_lcron(ret, rank, label_perm, gt_num, tau, w_rank, w_ret, k_ret=None, k_rank=None):
    """The authors' two-stage LCRON on full lists; ``label_perm`` is their (hard) label matrix."""
    k_ret = gt_num if k_ret is None else k_ret
    k_rank = gt_num if k_rank is None else k_rank
    pre = official_neuralsort(rank, tau)
    rec = official_neuralsort(ret, tau)
    count = torch.full((ret.shape[0],), ret.shape[1])

    # JointUltraLoss (the label mask is all ones on full lists)
    up_rec = rec[:, :k_ret, :].sum(-2) / (rec.detach().sum(-2) + 1e-6)
    up_pre = pre[:, :k_rank, :].sum(-2) / (pre.detach().sum(-2) + 1e-6)
    up_label = label_perm[:, :gt_num, :].sum(-2)
    up_joint = torch.mean(-torch.log(up_rec * up_pre + 1e-6) * up_label, dim=-1)
    down_rec = 1 - rec[:, k_ret:, :].sum(-2) / (rec.detach().sum(-2) + 1e-6)
    down_pre = 1 - pre[:, k_rank:, :].sum(-2) / (pre.detach().sum(-2) + 1e-6)
    down_label = torch.clamp(1 - up_label, min=0, max=1)
    down_joint = torch.mean(-torch.log((1 - down_rec * down_pre) + 1e-6) * down_label, dim=-1)
    l_joint = torch.mean(up_joint + down_joint)

    def lsingle(perm):  # top_k = support_m = gt_num
        raw = perm.detach().sum(-2)
        up = perm[:, :gt_num, :].sum(-2) / (raw + 1e-6)
        up_loss = torch.mean(-torch.log(up + 1e-6) * label_perm[:, :gt_num, :].sum(-2), dim=-1)
        down = perm[:, gt_num:, :].sum(-2) / (raw + 1e-6)
        down_loss = torch.mean(-torch.log(down + 1e-6) * label_perm[:, gt_num:, :].sum(-2), dim=-1)
        return torch.mean((up_loss + down_loss) * (count > gt_num).to(perm.dtype))

    l_pre, l_rec = lsingle(pre), lsingle(rec)
    total = (0.5 / w_rank.square()) * l_pre + (0.5 / w_ret.square()) * l_rec + l_joint
    total = total + torch.log(w_rank * w_ret)
    return total, {"e2e": l_joint, "retrieval_aux": l_rec, "ranking_aux": l_pre}


def _lists(batch=32, items=40, gt_num=10, seed=0, dtype=torch.float64):
    """The issue's comparison setup: B lists of N items, ``gt_num`` ground-truth items in each."""
    g = torch.Generator().manual_seed(seed)
    ret = torch.randn(batch, items, generator=g, dtype=dtype)
    rank = torch.randn(batch, items, generator=g, dtype=dtype)
    order = torch.argsort(torch.rand(batch, items, generator=g), dim=-1)
    labels = torch.zeros(batch, items, dtype=torch.long)
    labels.scatter_(1, order[:, :gt_num], 1)
    # the authors' label matrix: the hard permutation sorting the ground truth first
    label_perm = F.one_hot(order, items).to(dtype)
    return ret, rank, labels, label_perm


@pytest.mark.parametrize("tau", [50.0, 1.0])
@pytest.mark.parametrize(("items", "gt_num"), [(40, 10), (12, 1)])
def test_matches_the_authors_code_in_value_and_gradients(tau, items, gt_num):
    ret, rank, labels, label_perm = _lists(items=items, gt_num=gt_num)
    ours = LCRONLoss(temperature=tau)
    with torch.no_grad():  # trained weights, not 1, so the weighting formula is exercised
        ours.weight_retrieval.fill_(0.75)
        ours.weight_ranking.fill_(1.25)
    w_ret = torch.tensor(0.75, dtype=torch.float64, requires_grad=True)
    w_rank = torch.tensor(1.25, dtype=torch.float64, requires_grad=True)

    r1, s1 = ret.clone().requires_grad_(), rank.clone().requires_grad_()
    parts = ours.forward_components(r1, s1, labels)
    parts["loss"].backward()
    r2, s2 = ret.clone().requires_grad_(), rank.clone().requires_grad_()
    want, want_parts = official_lcron(r2, s2, label_perm, gt_num, tau, w_rank, w_ret)
    want.backward()

    torch.testing.assert_close(parts["loss"].double(), want, rtol=1e-10, atol=1e-12)
    for name in ("e2e", "retrieval_aux", "ranking_aux"):
        torch.testing.assert_close(parts[name].double(), want_parts[name].detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)
    # the weights are float32 parameters (exactly 0.75 and 1.25): their gradients are float32
    torch.testing.assert_close(ours.weight_retrieval.grad.double(), w_ret.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.weight_ranking.grad.double(), w_rank.grad, rtol=1e-6, atol=1e-9)


def test_funnel_sizes_option_matches_the_authors_joint_loss_with_those_ks():
    ret, rank, labels, label_perm = _lists(items=40, gt_num=10, seed=3)
    ours = LCRONLoss(temperature=1.0, retrieval_k=30, ranking_k=20, uncertainty_weighting=False)
    parts = ours.forward_components(ret, rank, labels)
    one = torch.tensor(1.0, dtype=torch.float64)
    _, want = official_lcron(ret, rank, label_perm, 10, 1.0, one, one, k_ret=30, k_rank=20)
    torch.testing.assert_close(parts["e2e"], want["e2e"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts["retrieval_aux"], want["retrieval_aux"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts["loss"], want["e2e"] + want["retrieval_aux"] + want["ranking_aux"])


def test_defaults_are_the_authors():
    loss = LCRONLoss()
    assert loss.temperature == 50.0 and loss.uncertainty_weighting
    assert loss.retrieval_k is None and loss.ranking_k is None  # = each list's ground-truth count
    assert {name for name, _ in loss.named_parameters()} == {"weight_retrieval", "weight_ranking"}


def test_non_ground_truth_items_surviving_are_penalised():
    """The part rankforge once dropped: pushing a negative out of a stage lowers the loss."""
    labels = torch.tensor([[1, 0, 0, 0, 0, 0]])
    base = torch.tensor([[2.0, 1.9, 0.0, -1.0, -2.0, -3.0]], dtype=torch.float64)
    demoted = base.clone()
    demoted[0, 1] = -4.0  # the negative that competed with the truth falls to the bottom
    loss = LCRONLoss(temperature=1.0, uncertainty_weighting=False)
    assert loss(demoted, demoted, labels) < loss(base, base, labels)


def test_padded_lists_give_the_unpadded_loss():
    ret, rank, labels, _ = _lists(batch=4, items=8, gt_num=2, seed=1)
    pad = torch.full((4, 3), 50.0, dtype=torch.float64)
    mask = torch.cat([torch.ones(4, 8, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    loss_fn = LCRONLoss(temperature=1.0)
    padded = loss_fn(
        torch.cat([ret, pad], 1), torch.cat([rank, pad], 1), torch.cat([labels, torch.ones(4, 3)], 1), mask
    )
    torch.testing.assert_close(padded, loss_fn(ret, rank, labels))


def test_lists_of_different_ground_truth_counts_use_their_own_k():
    """Per-list k = |T|: a batch of two lists is the mean of the two lists' losses."""
    a = _lists(batch=1, items=10, gt_num=1, seed=4)
    b = _lists(batch=1, items=10, gt_num=3, seed=5)
    loss_fn = LCRONLoss(temperature=1.0, uncertainty_weighting=False)
    both = loss_fn(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]]))
    torch.testing.assert_close(both, (loss_fn(*a[:3]) + loss_fn(*b[:3])) / 2)


def test_the_end_to_end_term_alone_reaches_both_stages():
    ret, rank, labels, _ = _lists(batch=4, items=8, gt_num=2)
    ret.requires_grad_()
    rank.requires_grad_()
    loss = LCRONLoss(1.0, uncertainty_weighting=False, retrieval_aux_weight=0.0, ranking_aux_weight=0.0)
    loss(ret, rank, labels).backward()
    assert ret.grad.abs().sum() > 0 and rank.grad.abs().sum() > 0


def test_loss_prefers_cascades_that_keep_the_ground_truth():
    labels = torch.tensor([[1, 0, 0, 0, 0]])
    good = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0]])
    bad = good.flip(-1)
    loss_fn = LCRONLoss(temperature=0.1, uncertainty_weighting=False)
    assert loss_fn(good, good, labels) < 1e-3
    assert loss_fn(bad, good, labels) > 1.0 and loss_fn(good, bad, labels) > 1.0


def test_lists_without_ground_truth_are_finite():
    ret, rank, labels, _ = _lists(batch=3, items=6, gt_num=2)
    ret.requires_grad_()
    loss = LCRONLoss(temperature=1.0)(ret, rank, torch.zeros_like(labels))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ret.grad).all()
    empty = LCRONLoss(temperature=1.0)(ret.detach(), rank, labels, torch.zeros(3, 6, dtype=torch.bool))
    assert torch.isfinite(empty)


def test_tied_scores_are_finite_and_shares_are_uniform():
    scores = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0, 0]])
    loss = LCRONLoss(temperature=1.0, uncertainty_weighting=False)(scores, scores, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    # All tied: each item is equally likely at every rank, so its top-1 share is 1/4.
    perm = neural_sort(scores.detach(), torch.ones(1, 4, dtype=torch.bool), 1.0)
    inside, outside = top_k_shares(perm, torch.tensor([1]))
    torch.testing.assert_close(inside, torch.full((1, 4), 0.25, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(outside, torch.full((1, 4), 0.75, dtype=torch.float64), atol=1e-5, rtol=0)


def test_components_are_stored_for_logging():
    ret, rank, labels, _ = _lists(batch=3, items=6, gt_num=2)
    loss_fn = LCRONLoss()
    loss = loss_fn(ret.float(), rank.float(), labels)
    c = loss_fn.components
    assert set(c) == {"loss", "e2e", "retrieval_aux", "ranking_aux"}
    # w = 1 at initialisation: each single loss is halved and log(w_rank * w_ret) = 0.
    torch.testing.assert_close(loss.detach(), c["e2e"] + 0.5 * c["retrieval_aux"] + 0.5 * c["ranking_aux"])


# ----------------------------------------------------------------------------- NeuralSort


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


def test_neural_sort_matches_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    perm = neural_sort(scores, mask, temperature=0.7)
    for b in range(3):
        valid = [m for m in range(6) if mask[b, m]]
        want = ref_neural_sort([scores[b, m].item() for m in valid], 0.7)
        torch.testing.assert_close(perm[b][: len(valid)][:, valid], torch.tensor(want, dtype=torch.float64))
    assert perm[1, 4:].abs().sum() == 0 and perm[1, :, 4:].abs().sum() == 0
    full = torch.ones(3, 6, dtype=torch.bool)
    torch.testing.assert_close(neural_sort(scores, full, 50.0), official_neuralsort(scores, 50.0))


def test_neural_sort_tends_to_the_hard_descending_sort():
    scores = torch.tensor([[0.3, 2.0, -1.0, 1.1]])
    perm = neural_sort(scores, torch.ones_like(scores, dtype=torch.bool), temperature=1e-3)
    hard = F.one_hot(scores.argsort(dim=-1, descending=True), 4).to(perm.dtype)
    torch.testing.assert_close(perm, hard)
    inside, _ = top_k_shares(perm, torch.tensor([2]))
    torch.testing.assert_close(inside, torch.tensor([[0.0, 1.0, 0.0, 1.0]]), atol=1e-5, rtol=0)


def test_wrong_inputs_raise_naming_the_tensor():
    ret, rank, labels, _ = _lists(batch=3, items=6, gt_num=2)
    mask = torch.ones(3, 6, dtype=torch.bool)
    loss_fn = LCRONLoss()
    with pytest.raises(ValueError, match=r"ranking_scores: expected shape \[B=3, M=6\], got \(3, 5\)"):
        loss_fn(ret, rank[:, :5], labels, mask)
    with pytest.raises(ValueError, match="labels: expected shape"):
        loss_fn(ret, rank, labels[:2], mask)
    with pytest.raises(ValueError, match="mask: expected a bool mask"):
        loss_fn(ret, rank, labels, mask.float())
    with pytest.raises(ValueError, match="ranking_scores: expected dtype"):
        loss_fn(ret, rank.float(), labels, mask)
    with pytest.raises(ValueError, match="labels: expected binary"):
        loss_fn(ret, rank, labels * 3, mask)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retrieval_k": 2, "ranking_k": 3},
        {"retrieval_k": 0, "ranking_k": 0},
        {"retrieval_k": 3},
        {"temperature": 0.0},
        {"ranking_aux_weight": -1.0},
        {"retrieval_k": 3.5, "ranking_k": 2},
        {"uncertainty_weighting": 1},
    ],
)
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        LCRONLoss(**kwargs)
