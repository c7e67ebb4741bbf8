"""Tests for the Pairwise Softmax Loss (rankforge.training.objectives.psl)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rankforge.training.objectives.psl import PairwiseSoftmaxLoss

SIGMA = {
    "tanh": lambda d: math.tanh(d) + 1.0,
    "atan": lambda d: max(math.atan(d) + 1.0, 0.0),
    "relu": lambda d: max(d + 1.0, 0.0),
    "exp": math.exp,
}


def _score(u: list[float], v: list[float], similarity: str) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    if similarity == "dot":
        return dot
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def reference_psl(user, pos, neg, mask, activation, tau, similarity, score_tau, include_positive):
    """Slow loop: log sum_j sigma(d_uij)^(1/tau) per user, mean over users."""
    total = 0.0
    for b in range(user.shape[0]):
        u = user[b].tolist()
        s_pos = _score(u, pos[b].tolist(), similarity) / score_tau
        negs = neg if neg.dim() == 2 else neg[b]
        acc = 1.0 if include_positive else 0.0
        for j in range(negs.shape[0]):
            if mask is not None and not bool(mask[b, j]):
                continue
            d = _score(u, negs[j].tolist(), similarity) / score_tau - s_pos
            acc += SIGMA[activation](d) ** (1.0 / tau)
        total += math.log(acc) if acc > 0 else 0.0
    return total / user.shape[0]


def _inputs(batch=4, n=6, dim=5, shared=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    pos = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    neg = torch.randn(*((n, dim) if shared else (batch, n, dim)), generator=g, dtype=torch.float64)
    mask = torch.rand(batch, n, generator=g) > 0.3
    return user, pos, neg, mask


@pytest.mark.parametrize("activation", ["tanh", "atan", "relu", "exp"])
@pytest.mark.parametrize("include_positive", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_matches_slow_reference_cosine(activation, include_positive, shared):
    user, pos, neg, mask = _inputs(shared=shared)
    loss_fn = PairwiseSoftmaxLoss(activation, temperature=0.5, include_positive=include_positive)
    want = reference_psl(user, pos, neg, mask, activation, 0.5, "cosine", 1.0, include_positive)
    assert loss_fn(user, pos, neg, mask).item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("activation", ["tanh", "atan", "relu"])
def test_matches_slow_reference_dot_with_score_temperature(activation):
    user, pos, neg, _ = _inputs(dim=3)
    loss_fn = PairwiseSoftmaxLoss(activation, temperature=0.7, similarity="dot", score_temperature=2.0)
    want = reference_psl(user, pos, neg, None, activation, 0.7, "dot", 2.0, True)
    assert loss_fn(user, pos, neg).item() == pytest.approx(want, rel=1e-9)


def test_exp_activation_is_sampled_softmax_cross_entropy():
    user, pos, neg, _ = _inputs()
    tau = 0.3
    logits = torch.cat(
        [
            F.cosine_similarity(user, pos).unsqueeze(-1),
            F.cosine_similarity(user.unsqueeze(1), neg, dim=-1),
        ],
        dim=-1,
    )
    want = F.cross_entropy(logits / tau, torch.zeros(user.shape[0], dtype=torch.long))
    torch.testing.assert_close(PairwiseSoftmaxLoss("exp", temperature=tau)(user, pos, neg), want)


@pytest.mark.parametrize("activation", ["tanh", "atan", "relu"])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_gradcheck(activation, similarity):
    user, pos, neg, mask = _inputs(batch=3, n=4, dim=3, seed=2)
    scale = 1.0 if similarity == "cosine" else 0.3  # keep dot products in a smooth region
    loss_fn = PairwiseSoftmaxLoss(activation, temperature=0.5, similarity=similarity)
    inputs = tuple((t * scale).requires_grad_() for t in (user, pos, neg))
    assert torch.autograd.gradcheck(lambda u, p, n: loss_fn(u, p, n, mask), inputs)


def test_tanh_is_finite_for_very_negative_differences():
    user = torch.tensor([[10.0, 0.0]], requires_grad=True)
    pos = torch.tensor([[10.0, 0.0]])
    neg = torch.tensor([[[-10.0, 0.0]]])  # dot difference -200: tanh(d) + 1 underflows naively
    loss = PairwiseSoftmaxLoss("tanh", temperature=0.1, similarity="dot")(user, pos, neg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(user.grad).all()


@pytest.mark.parametrize("activation", ["relu", "atan"])
def test_clipped_negatives_without_positive_term_give_zero_not_nan(activation):
    # Every negative is far below the positive (dot difference -4 <= -1 and < -tan(1)).
    user = torch.tensor([[2.0, 0.0]], requires_grad=True)
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[-1.0, 0.0], [-1.0, 0.5]]])
    loss_fn = PairwiseSoftmaxLoss(activation, similarity="dot", include_positive=False)
    loss = loss_fn(user, pos, neg)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(user.grad).all()


@pytest.mark.parametrize("include_positive", [True, False])
def test_user_without_valid_negatives_contributes_zero(include_positive):
    user, pos, neg, mask = _inputs()
    mask[0] = False
    user.requires_grad_()
    loss_fn = PairwiseSoftmaxLoss("tanh", include_positive=include_positive)
    full = loss_fn(user, pos, neg, mask)
    rest = loss_fn(user[1:], pos[1:], neg[1:], mask[1:])
    torch.testing.assert_close(full, rest * 3 / 4)
    full.backward()
    assert torch.isfinite(user.grad).all()


def test_masked_padding_is_ignored():
    user, pos, neg, _ = _inputs(n=5)
    padded = torch.cat([neg, 50 * torch.randn(4, 2, neg.shape[-1], dtype=neg.dtype)], dim=1)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[:, 5:] = False
    loss_fn = PairwiseSoftmaxLoss("atan", temperature=0.3)
    torch.testing.assert_close(loss_fn(user, pos, padded, mask), loss_fn(user, pos, neg))


def test_tied_negative_adds_exactly_one_unit_of_mass():
    user = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[1.0, 0.0]]])  # a tie: d = 0, sigma(0) = 1
    for activation in ("tanh", "atan", "relu", "exp"):
        loss = PairwiseSoftmaxLoss(activation, temperature=0.25)(user, pos, neg)
        assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_hundreds_of_negatives_per_positive_backprop():
    torch.manual_seed(0)
    user = torch.randn(256, 64, requires_grad=True)
    pos = torch.randn(256, 64, requires_grad=True)
    neg = torch.randn(500, 64, requires_grad=True)  # shared across the batch
    loss = PairwiseSoftmaxLoss("tanh", temperature=0.2)(user, pos, neg)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (user, pos, neg))


def test_wrong_shapes_raise_naming_the_tensor():
    loss_fn = PairwiseSoftmaxLoss()
    with pytest.raises(ValueError, match=r"pos_emb: expected shape \[B=4, D=5\], got \(4, 6\)"):
        loss_fn(torch.randn(4, 5), torch.randn(4, 6), torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="neg_emb"):
        loss_fn(torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 3, 2, 5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "sigmoid"},
        {"temperature": 0.0},
        {"similarity": "l2"},
        {"score_temperature": -1.0},
        {"include_positive": "yes"},
    ],
)
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        PairwiseSoftmaxLoss(**kwargs)
