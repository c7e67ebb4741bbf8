"""Tests for the Confidence Ranking CTR loss (rankforge.training.objectives.confidence_ranking)."""

import math

import pytest
import torch

from rankforge.training.objectives.confidence_ranking import ConfidenceRankingLoss


def reference_confidence_ranking(logits, labels, ref, surrogate, margin, rank_weight, bce_weight):
    """Slow per-example loop: BCE plus phi(z * (f - g)), z = +1 for a click, -1 otherwise."""
    bce = rank = 0.0
    n = len(logits)
    for f, y, g in zip(logits.tolist(), labels.tolist(), ref.tolist(), strict=True):
        p = 1.0 / (1.0 + math.exp(-f))
        bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
        # The new model's logit must rank above the reference on clicks, below on non-clicks.
        t = (f - g) if y == 1 else (g - f)
        rank += math.log1p(math.exp(-t)) if surrogate == "logistic" else max(0.0, margin - t)
    return bce_weight * bce / n + rank_weight * rank / n


def _inputs(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, generator=g) > 0.5).long()
    ref = torch.randn(n, generator=g, dtype=torch.float64)
    return logits, labels, ref


@pytest.mark.parametrize("surrogate", ["logistic", "hinge"])
@pytest.mark.parametrize(("rank_weight", "bce_weight"), [(1.0, 1.0), (0.3, 2.0), (1.0, 0.0)])
def test_matches_slow_reference(surrogate, rank_weight, bce_weight):
    logits, labels, ref = _inputs()
    loss_fn = ConfidenceRankingLoss(surrogate, margin=0.5, rank_weight=rank_weight, bce_weight=bce_weight)
    want = reference_confidence_ranking(logits, labels, ref, surrogate, 0.5, rank_weight, bce_weight)
    assert loss_fn(logits, labels, ref).item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("surrogate", ["logistic", "hinge"])
def test_gradcheck(surrogate):
    logits, labels, ref = _inputs(n=6, seed=3)
    loss_fn = ConfidenceRankingLoss(surrogate, margin=0.25)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels, ref), (logits,))


def test_reference_logits_receive_no_gradient():
    logits, labels, ref = _inputs()
    logits.requires_grad_()
    ref.requires_grad_()
    ConfidenceRankingLoss()(logits, labels, ref).backward()
    assert ref.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_rank_gradient_pushes_new_logit_past_reference():
    logits = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0])
    ref = torch.zeros(2, dtype=torch.float64)
    ConfidenceRankingLoss(rank_weight=1.0, bce_weight=0.0)(logits, labels, ref).backward()
    # Gradient descent raises the clicked logit and lowers the non-clicked one.
    assert logits.grad[0] < 0 < logits.grad[1]


@pytest.mark.parametrize("label", [0, 1])
def test_batches_with_only_one_label_are_finite(label):
    logits, _, ref = _inputs()
    labels = torch.full_like(logits, float(label))
    parts = ConfidenceRankingLoss("hinge").forward_components(logits, labels, ref)
    want = reference_confidence_ranking(logits, labels.long(), ref, "hinge", 1.0, 1.0, 1.0)
    assert parts["loss"].item() == pytest.approx(want, rel=1e-10)
    assert torch.isfinite(parts["bce"]) and torch.isfinite(parts["rank"])


def test_hinge_is_zero_once_margin_is_met_and_ties_cost_the_margin():
    labels = torch.tensor([True, False])
    ref = torch.tensor([0.0, 0.0])
    loss_fn = ConfidenceRankingLoss("hinge", margin=1.0, bce_weight=0.0)
    assert loss_fn(torch.tensor([1.5, -1.5]), labels, ref).item() == 0.0
    assert loss_fn(torch.tensor([0.0, 0.0]), labels, ref).item() == pytest.approx(1.0)
    tie = ConfidenceRankingLoss("logistic", bce_weight=0.0)(torch.zeros(2), labels, ref)
    assert tie.item() == pytest.approx(math.log(2.0))


def test_components_are_reported():
    logits, labels, ref = _inputs()
    parts = ConfidenceRankingLoss(rank_weight=0.5, bce_weight=2.0).forward_components(logits, labels, ref)
    assert set(parts) == {"loss", "bce", "rank"}
    torch.testing.assert_close(parts["loss"], 2.0 * parts["bce"] + 0.5 * parts["rank"])


def test_wrong_inputs_raise_naming_the_tensor():
    logits, labels, ref = _inputs()
    loss_fn = ConfidenceRankingLoss()
    with pytest.raises(ValueError, match=r"reference_logits: expected shape \[B=9\], got \(8,\)"):
        loss_fn(logits, labels, ref[:8])
    with pytest.raises(ValueError, match=r"labels: expected shape \[B=9\], got \(9, 1\)"):
        loss_fn(logits, labels.unsqueeze(-1), ref)
    with pytest.raises(ValueError, match="logits: expected shape"):
        loss_fn(logits.view(3, 3), labels, ref)
    with pytest.raises(ValueError, match="labels: expected binary"):
        loss_fn(logits, labels * 2, ref)
    with pytest.raises(ValueError, match="logits: expected a floating-point"):
        loss_fn(labels, labels, ref)
    with pytest.raises(ValueError, match="at least one example"):
        loss_fn(logits[:0], labels[:0], ref[:0])


@pytest.mark.parametrize("kwargs", [{"surrogate": "exp"}, {"margin": -1.0}, {"rank_weight": -0.1}])
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        ConfidenceRankingLoss(**kwargs)
