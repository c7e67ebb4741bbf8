import pytest
import torch

from rankforge.errors import ConfigError
from rankforge.training.losses import resolve_objective
from rankforge.training.objectives import BinaryCrossEntropyLoss, SampledSoftmaxLoss, build_objective


def test_sampled_softmax_is_cross_entropy_over_positive_and_valid_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    user, pos, neg = (
        torch.randn(6, 4, generator=g),
        torch.randn(6, 4, generator=g),
        torch.randn(6, 5, 4, generator=g),
    )
    mask = torch.rand(6, 5, generator=g) > 0.3
    got = SampledSoftmaxLoss(temperature=0.5)(user, pos, neg, mask)
    losses = []
    for b in range(6):  # loop reference
        logits = [float(user[b] @ pos[b]) / 0.5] + [
            float(user[b] @ neg[b, j]) / 0.5 for j in range(5) if mask[b, j]
        ]
        losses.append(-torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)[0])
    assert float(got) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def test_bce_matches_torch_and_checks_shapes() -> None:
    logits, labels = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.equal(BinaryCrossEntropyLoss()(logits, labels, torch.zeros(2)), expected)
    with pytest.raises(ValueError, match="labels"):
        BinaryCrossEntropyLoss()(logits, labels[:1])


def test_registry_and_kind_check() -> None:
    assert isinstance(build_objective("sampled_softmax", temperature=0.2), SampledSoftmaxLoss)
    with pytest.raises(ConfigError, match="takes 'ctr' inputs but this model trains on 'retrieval'"):
        resolve_objective("bce", {}, "retrieval")
    with pytest.raises(ConfigError, match="unknown objective"):
        resolve_objective("nope", {}, "retrieval")
