"""Tests for the SimpleX cosine contrastive loss (rankforge.training.objectives.ccl)."""

import math

import pytest
import torch

from rankforge.training.objectives.ccl import CosineContrastiveLoss


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_ccl(user, pos, neg, mask, margin, negative_weight):
    """Slow per-user loop straight from SimpleX Sec. 3.1."""
    total = 0.0
    batch = user.shape[0]
    for b in range(batch):
        u = user[b].tolist()
        loss = 1.0 - _cos(u, pos[b].tolist())
        negs = neg if neg.dim() == 2 else neg[b]
        terms = [
            max(0.0, _cos(u, negs[j].tolist()) - margin)
            for j in range(negs.shape[0])
            if mask is None or bool(mask[b, j])
        ]
        if negative_weight is None:
            loss += sum(terms)
        elif terms:
            loss += negative_weight * sum(terms) / len(terms)
        total += loss
    return total / batch


def _inputs(batch=4, n=6, dim=5, shared=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(batch, dim, generator=g, dtype=dtype)
    pos = torch.randn(batch, dim, generator=g, dtype=dtype)
    shape = (n, dim) if shared else (batch, n, dim)
    neg = torch.randn(*shape, generator=g, dtype=dtype)
    mask = torch.rand(batch, n, generator=g) > 0.3
    return user, pos, neg, mask


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("negative_weight", [None, 3.0])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_slow_reference(shared, negative_weight, use_mask):
    user, pos, neg, mask = _inputs(shared=shared)
    mask = mask if use_mask else None
    loss_fn = CosineContrastiveLoss(margin=0.1, negative_weight=negative_weight)
    got = loss_fn(user, pos, neg, mask)
    want = reference_ccl(user, pos, neg, mask, 0.1, negative_weight)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_shared_negatives_equal_expanded_per_example():
    user, pos, neg, mask = _inputs(shared=True)
    loss_fn = CosineContrastiveLoss(margin=0.0, negative_weight=2.0)
    expanded = neg.unsqueeze(0).expand(user.shape[0], -1, -1)
    torch.testing.assert_close(loss_fn(user, pos, neg, mask), loss_fn(user, pos, expanded, mask))


@pytest.mark.parametrize("negative_weight", [None, 5.0])
def test_gradcheck(negative_weight):
    user, pos, neg, mask = _inputs(batch=3, n=4, dim=3, seed=1)
    loss_fn = CosineContrastiveLoss(margin=-0.2, negative_weight=negative_weight)
    inputs = tuple(t.clone().requires_grad_() for t in (user, pos, neg))
    assert torch.autograd.gradcheck(lambda u, p, n: loss_fn(u, p, n, mask), inputs)


def test_masked_padding_is_ignored():
    user, pos, neg, _ = _inputs(n=5)
    padding = 100.0 * torch.randn(user.shape[0], 3, neg.shape[-1], dtype=neg.dtype)
    padded = torch.cat([neg, padding], dim=1)
    mask = torch.cat([torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    for weight in (None, 2.0):
        loss_fn = CosineContrastiveLoss(margin=0.0, negative_weight=weight)
        torch.testing.assert_close(loss_fn(user, pos, padded, mask), loss_fn(user, pos, neg))


def test_user_without_valid_negatives_keeps_only_positive_term():
    user, pos, neg, _ = _inputs()
    mask = torch.zeros(user.shape[0], neg.shape[1], dtype=torch.bool)
    user.requires_grad_()
    loss = CosineContrastiveLoss(margin=0.0, negative_weight=4.0)(user, pos, neg, mask)
    want = (1 - torch.nn.functional.cosine_similarity(user, pos)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert torch.isfinite(user.grad).all()


def test_easy_negatives_below_margin_contribute_nothing():
    user = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # cosines 0 and -1, both <= margin 0.5
    loss = CosineContrastiveLoss(margin=0.5)(user, pos, neg)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_hundreds_of_negatives_per_positive_backprop():
    torch.manual_seed(0)
    user = torch.randn(256, 64, requires_grad=True)
    pos = torch.randn(256, 64, requires_grad=True)
    neg = torch.randn(256, 500, 64, requires_grad=True)
    loss = CosineContrastiveLoss(margin=0.0, negative_weight=150.0)(user, pos, neg)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (user, pos, neg):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("user_shape", "pos_shape", "neg_shape", "needle"),
    [
        ((4, 5), (3, 5), (4, 6, 5), "pos_emb"),
        ((4, 5), (4, 5), (4, 6, 7), "neg_emb"),
        ((4, 5), (4, 5), (2, 6, 5), "neg_emb"),
        ((4, 5), (4, 5), (6,), "neg_emb"),
        ((4,), (4, 5), (4, 6, 5), "user_emb"),
    ],
)
def test_wrong_shapes_raise_naming_the_tensor(user_shape, pos_shape, neg_shape, needle):
    loss_fn = CosineContrastiveLoss()
    with pytest.raises(ValueError, match=needle):
        loss_fn(torch.randn(*user_shape), torch.randn(*pos_shape), torch.randn(*neg_shape))


def test_bad_mask_and_dtype_raise():
    user, pos, neg, mask = _inputs()
    loss_fn = CosineContrastiveLoss()
    with pytest.raises(ValueError, match=r"neg_mask: expected shape \[B=4, N=6\], got \(4, 5\)"):
        loss_fn(user, pos, neg, mask[:, :5])
    with pytest.raises(ValueError, match="neg_mask: expected a bool mask"):
        loss_fn(user, pos, neg, mask.float())
    with pytest.raises(ValueError, match="user_emb: expected a floating-point"):
        loss_fn(user.long(), pos, neg)


@pytest.mark.parametrize("kwargs", [{"margin": 1.0}, {"margin": -1.5}, {"negative_weight": 0.0}])
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        CosineContrastiveLoss(**kwargs)
