"""Tests for the welfare-weighted pairwise rankloss (rankforge.training.objectives.welfare_rankloss)."""

import math

import pytest
import torch

from rankforge.training.objectives.welfare_rankloss import WelfareRankLoss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def reference_welfare(logits, labels, bids, mask, teacher, score, teacher_weight, bce_weight):
    """Slow loop over auctions and ordered ad pairs."""
    pair_sum, n_pairs, bce_sum, n_valid = 0.0, 0, 0.0, 0
    for a in range(logits.shape[0]):
        ads = [m for m in range(logits.shape[1]) if bool(mask[a, m])]
        for i in ads:
            f, y = logits[a, i].item(), labels[a, i].item()
            bce_sum += -(y * math.log(_sigmoid(f)) + (1 - y) * math.log(1 - _sigmoid(f)))
            n_valid += 1

        def s(m, a=a):
            p, b = _sigmoid(logits[a, m].item()), bids[a, m].item()
            return math.log(b * p) if score == "log_ecpm" else b * p

        for i in ads:
            y = labels[a, i].item()
            if teacher is not None:
                y = (1 - teacher_weight) * y + teacher_weight * _sigmoid(teacher[a, i].item())
            for j in ads:
                if i == j:
                    continue
                pair_sum += bids[a, i].item() * y * math.log1p(math.exp(-(s(i) - s(j))))
                n_pairs += 1
    rank = pair_sum / n_pairs if n_pairs else 0.0
    return rank + bce_weight * (bce_sum / n_valid if n_valid else 0.0)


def _inputs(auctions=3, ads=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(auctions, ads, generator=g, dtype=torch.float64)
    labels = (torch.rand(auctions, ads, generator=g) > 0.6).long()
    bids = 0.1 + 2 * torch.rand(auctions, ads, generator=g, dtype=torch.float64)
    mask = torch.rand(auctions, ads, generator=g) > 0.2
    teacher = torch.randn(auctions, ads, generator=g, dtype=torch.float64)
    return logits, labels, bids, mask, teacher


@pytest.mark.parametrize("score", ["log_ecpm", "ecpm"])
@pytest.mark.parametrize("use_teacher", [False, True])
@pytest.mark.parametrize("teacher_weight", [1.0, 0.4])
@pytest.mark.parametrize("bce_weight", [0.0, 0.5])
def test_matches_slow_reference(score, use_teacher, teacher_weight, bce_weight):
    logits, labels, bids, mask, teacher = _inputs()
    teacher = teacher if use_teacher else None
    loss_fn = WelfareRankLoss(score=score, teacher_weight=teacher_weight, bce_weight=bce_weight)
    want = reference_welfare(logits, labels, bids, mask, teacher, score, teacher_weight, bce_weight)
    got = loss_fn(logits, labels, bids, mask, teacher)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("score", ["log_ecpm", "ecpm"])
def test_gradcheck(score):
    logits, labels, bids, mask, teacher = _inputs(seed=4)
    loss_fn = WelfareRankLoss(score=score, teacher_weight=0.5, bce_weight=0.3)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels, bids, mask, teacher), (logits,))


def test_teacher_receives_no_gradient():
    logits, labels, bids, mask, teacher = _inputs()
    teacher.requires_grad_()
    logits.requires_grad_()
    WelfareRankLoss()(logits, labels, bids, mask, teacher).backward()
    assert teacher.grad is None and logits.grad.abs().sum() > 0


def test_the_bid_unit_scales_the_loss_and_its_gradients_but_not_the_ranking():
    logits, labels, bids, mask, _ = _inputs()
    loss_fn = WelfareRankLoss()
    # Weights scale with the bids, the logistic terms of log-eCPM do not: loss and gradients
    # scale linearly (the docstring's "NOT irrelevant to the loss value and gradients").
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    scaled = loss_fn(a, labels, 100 * bids, mask)
    plain = loss_fn(b, labels, bids, mask)
    torch.testing.assert_close(scaled, 100 * plain)
    (scaled + plain).backward()
    torch.testing.assert_close(a.grad, 100 * b.grad)


@pytest.mark.parametrize("score", ["log_ecpm", "ecpm"])
def test_auction_mean_normalisation_removes_the_bid_unit(score):
    logits, labels, bids, mask, _ = _inputs()
    loss_fn = WelfareRankLoss(score=score, bid_normalization="auction_mean")
    torch.testing.assert_close(loss_fn(logits, labels, 100 * bids, mask), loss_fn(logits, labels, bids, mask))
    # an independent transcription: bids divided by their auction's mean over valid ads
    valid = mask.to(bids.dtype)
    means = (bids * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True)
    normalised = torch.where(mask, bids / means, 1.0)
    plain = WelfareRankLoss(score=score)(logits, labels, normalised, mask)
    torch.testing.assert_close(loss_fn(logits, labels, bids, mask), plain)


def test_higher_bid_click_gets_the_larger_push():
    logits = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 1, 0]])
    bids = torch.tensor([[3.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    WelfareRankLoss()(logits, labels, bids, mask).backward()
    # Descent raises the clicked ads' logits, the expensive click the most; lowers the non-click.
    assert logits.grad[0, 0] < logits.grad[0, 1] < 0 < logits.grad[0, 2]


def test_padding_is_ignored():
    logits, labels, bids, mask, teacher = _inputs()
    mask[:] = True
    pad = torch.full((3, 2), 7.0, dtype=torch.float64)
    padded = [torch.cat([t, pad.to(t.dtype)], dim=1) for t in (logits, labels, bids, teacher)]
    padded_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    loss_fn = WelfareRankLoss(bce_weight=0.2)
    want = loss_fn(logits, labels, bids, mask, teacher)
    got = loss_fn(padded[0], padded[1], padded[2], padded_mask, padded[3])
    torch.testing.assert_close(got, want)


def test_auctions_without_pairs_or_clicks_give_zero_not_nan():
    logits = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [0, 0, 0]])
    bids = torch.ones(2, 3, dtype=torch.float64)
    mask = torch.tensor([[True, False, False], [True, True, True]])  # one lone ad, one no-click
    loss = WelfareRankLoss()(logits, labels, bids, mask)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()
    empty = WelfareRankLoss(bce_weight=1.0)(logits, labels, bids, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0


def test_all_clicked_and_tied_scores():
    logits = torch.zeros(1, 3, dtype=torch.float64)
    labels = torch.ones(1, 3)
    bids = torch.ones(1, 3, dtype=torch.float64)
    loss = WelfareRankLoss()(logits, labels, bids, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(2.0))  # every pair tied, weight 1


def test_components_are_reported():
    logits, labels, bids, mask, _ = _inputs()
    parts = WelfareRankLoss(bce_weight=0.5).forward_components(logits, labels, bids, mask)
    torch.testing.assert_close(parts["loss"], parts["rank"] + 0.5 * parts["bce"])


def test_wrong_inputs_raise_naming_the_tensor():
    logits, labels, bids, mask, teacher = _inputs()
    loss_fn = WelfareRankLoss()
    with pytest.raises(ValueError, match=r"bids: expected shape \[A=3, M=5\], got \(3, 4\)"):
        loss_fn(logits, labels, bids[:, :4], mask)
    with pytest.raises(ValueError, match="mask: expected a bool mask"):
        loss_fn(logits, labels, bids, mask.long())
    with pytest.raises(ValueError, match="teacher_logits: expected shape"):
        loss_fn(logits, labels, bids, mask, teacher[:2])
    with pytest.raises(ValueError, match="logits: expected shape"):
        loss_fn(logits.flatten(), labels, bids, mask)
    with pytest.raises(ValueError, match="bids: expected finite bids > 0"):
        loss_fn(logits, labels, bids - 5.0, mask)
    with pytest.raises(ValueError, match="labels: expected binary"):
        loss_fn(logits, labels + 1, bids, mask)


@pytest.mark.parametrize(
    "kwargs",
    [{"score": "revenue"}, {"teacher_weight": 1.5}, {"bce_weight": -1.0}, {"bid_normalization": "max"}],
)
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        WelfareRankLoss(**kwargs)
