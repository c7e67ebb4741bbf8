"""The fast per-example-negatives path against the straightforward one: same scores, losses and
gradients on random inputs (gather a [B, M, D] copy, normalise it, multiply)."""

from __future__ import annotations

import pytest
import torch

from rankforge.models.inputs import padded_to_kjt
from rankforge.models.matrix_factorization import MatrixFactorization
from rankforge.models.scoring import Scoring
from rankforge.training.objectives import CosineContrastiveLoss, PairwiseSoftmaxLoss
from rankforge.training.prefetch import prefetched
from rankforge.training.sampled_scores import SampledPattern, sampled_scores, unit_rows
from rankforge.training.tasks import RetrievalTask


def _ids(g: torch.Generator, b: int, m: int, n_items: int) -> torch.Tensor:
    ids = torch.randint(n_items, (b, m), generator=g)
    ids[0, 1] = ids[0, 0]  # a negative equal to its positive, and repeats across rows
    ids[1] = ids[0]
    return ids


@pytest.mark.parametrize("layout", ["distinct", "catalogue"])
def test_sampled_scores_equal_gathered_dot_products(layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    n_items, b, m, d = 13, 6, 5, 4
    ids = _ids(g, b, m, n_items)
    pattern = SampledPattern.of(ids) if layout == "distinct" else SampledPattern.over_catalogue(ids, n_items)
    table = torch.randn(n_items, d, dtype=torch.float64, generator=g)
    query = torch.randn(b, d, dtype=torch.float64, generator=g, requires_grad=True)
    candidates = table[pattern.unique].clone().requires_grad_(True)
    got = sampled_scores(query, candidates, pattern)

    full = torch.zeros(n_items, d, dtype=torch.float64)
    full[pattern.unique] = candidates.detach()
    full.requires_grad_(True)
    query2 = query.detach().clone().requires_grad_(True)
    want = torch.stack([torch.stack([query2[r] @ full[ids[r, c]] for c in range(m)]) for r in range(b)])
    torch.testing.assert_close(got, want)

    weights = torch.randn(b, m, dtype=torch.float64, generator=g)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(query.grad, query2.grad)
    torch.testing.assert_close(candidates.grad, full.grad[pattern.unique])
    assert torch.autograd.gradcheck(lambda q, c: sampled_scores(q, c, pattern), (query, candidates))


def test_pattern_layouts() -> None:
    g = torch.Generator().manual_seed(1)
    ids = _ids(g, 7, 4, 20)
    pattern = SampledPattern.of(ids)
    assert torch.equal(pattern.unique, torch.unique(ids))
    assert torch.equal(pattern.unique[pattern.cols].view(7, 4), ids)
    assert torch.equal(pattern.counts, torch.unique(ids, return_counts=True)[1])
    # the transposed layout lists every score once, grouped by candidate, rows ascending in a group
    assert sorted(pattern.order.tolist()) == list(range(28))
    flat = ids.reshape(-1)
    for u, (start, end) in enumerate(zip(pattern.crow[:-1].tolist(), pattern.crow[1:].tolist(), strict=True)):
        entries = pattern.order[start:end]
        assert torch.all(flat[entries] == pattern.unique[u])
        assert torch.equal(pattern.rows[start:end], entries // 4)
        assert torch.all(entries[1:] > entries[:-1])
    catalogue = SampledPattern.over_catalogue(ids, 20)
    assert torch.equal(catalogue.unique, torch.arange(20))
    assert torch.equal(catalogue.counts, torch.bincount(flat, minlength=20))


def test_unit_rows_equals_normalize_with_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 5, dtype=torch.float64, generator=g)
    x[3] = 0.0  # a zero row stays zero
    x[4] *= 1e-15  # a row whose norm is clamped
    x.requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    grad = torch.randn(9, 5, dtype=torch.float64, generator=g)
    torch.testing.assert_close(unit_rows(x), torch.nn.functional.normalize(y, dim=-1))
    (unit_rows(x) * grad).sum().backward()
    (torch.nn.functional.normalize(y, dim=-1) * grad).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-3)  # clamped row: 1e12-sized entries
    torch.testing.assert_close(x.grad[[0, 1, 2, 5, 6, 7, 8]], y.grad[[0, 1, 2, 5, 6, 7, 8]])


@pytest.mark.parametrize(
    "loss",
    [
        CosineContrastiveLoss(margin=0.2, negative_weight=3.0),
        PairwiseSoftmaxLoss("relu", temperature=0.3, score_temperature=2.0, include_positive=False),
    ],
    ids=["ccl", "psl"],
)
def test_task_fast_layouts_equal_the_gathered_loss(loss: torch.nn.Module) -> None:
    """One training step's loss and table gradients: the catalogue and distinct layouts of the
    task against the objective's own forward on gathered [B, N, D] negatives."""
    g = torch.Generator().manual_seed(3)
    n_users, n_items, b, n = 8, 15, 6, 7
    torch.manual_seed(4)
    model = MatrixFactorization(n_users, n_items, 4, Scoring.of(loss), init_std=0.5)
    task = RetrievalTask(model, loss, embedding_l2=0.01)
    users = torch.randint(n_users, (b,), generator=g)
    positives = torch.randint(n_items, (b,), generator=g)
    negatives = torch.randint(n_items, (b, n), generator=g)
    negatives[0, 0] = positives[0]
    mask = negatives != positives.unsqueeze(1)
    scored = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    user_kjt = padded_to_kjt({"user_id": users.unsqueeze(1)}, ["user_id"])

    def step(items, pattern) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        value = task(user_kjt, items, mask, pattern)
        value.backward()
        return value.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    catalogue = step(None, SampledPattern.over_catalogue(scored, n_items))
    distinct_pattern = SampledPattern.of(scored)
    distinct = step(
        padded_to_kjt({"item_id": distinct_pattern.unique.unsqueeze(1)}, ["item_id"]), distinct_pattern
    )

    model.zero_grad()
    table_u, table_i = (model.ebc.embedding_bags[t].weight for t in ("t_user_id", "t_item_id"))
    user_emb, pos_emb, neg_emb = table_u[users], table_i[positives], table_i[negatives]
    straight = loss(user_emb, pos_emb, neg_emb, mask)
    squares = user_emb.square().sum() + pos_emb.square().sum() + neg_emb.square().sum()
    straight = straight + 0.01 * squares / b
    straight.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}

    for value, grads in (catalogue, distinct):
        torch.testing.assert_close(value, straight.detach())
        for key in expected:
            torch.testing.assert_close(grads[key], expected[key], msg=key)


def test_prefetched_yields_the_same_items_and_raises_where_production_failed() -> None:
    assert list(prefetched(range(50), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("bad batch")

    out = []
    with pytest.raises(RuntimeError, match="bad batch"):
        for item in prefetched(failing()):
            out.append(item)
    assert out == [1]
