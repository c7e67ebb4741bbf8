"""Tests for selecting objectives by name (rankforge.training.objectives.registry)."""

import pytest
import torch

import rankforge.training.objectives as objectives
from rankforge.errors import ConfigError
from rankforge.training.objectives import OBJECTIVES, build_objective

EXPECTED_KINDS = {
    "ccl": "retrieval",
    "psl": "retrieval",
    "confidence_ranking": "ctr",
    "welfare_rankloss": "auction",
    "lcron": "cascade",
    "sampled_softmax": "retrieval",
    "bce": "ctr",
    "bpr": "retrieval",
}

PARAMS = {
    "ccl": {"margin": 0.5, "negative_weight": 10.0},
    "psl": {"activation": "relu", "temperature": 0.3, "similarity": "dot"},
    "confidence_ranking": {"surrogate": "hinge", "margin": 0.5},
    "welfare_rankloss": {"score": "ecpm", "teacher_weight": 0.5},
    "lcron": {"retrieval_k": 4, "ranking_k": 2, "temperature": 0.5, "uncertainty_weighting": False},
    "sampled_softmax": {"temperature": 0.3},
    "bce": {},
    "bpr": {"similarity": "cosine"},
}


def _example_inputs(kind: str) -> tuple:
    torch.manual_seed(0)
    if kind == "retrieval":
        return torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 16, 8), torch.rand(4, 16) > 0.2
    if kind == "ctr":
        return torch.randn(6), torch.tensor([1, 0, 1, 0, 0, 1]), torch.randn(6)
    if kind == "auction":
        return (
            torch.randn(3, 5),
            (torch.rand(3, 5) > 0.5).long(),
            torch.rand(3, 5) + 0.1,
            torch.rand(3, 5) > 0.2,
        )
    return torch.randn(3, 8), torch.randn(3, 8), (torch.rand(3, 8) > 0.6).long(), torch.rand(3, 8) > 0.1


def test_registry_names_and_kinds():
    assert {name: cls.kind for name, cls in OBJECTIVES.items()} == EXPECTED_KINDS


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_build_each_objective_and_run_it(name):
    loss_fn = build_objective(name, **PARAMS[name])
    assert isinstance(loss_fn, OBJECTIVES[name])
    for key, value in PARAMS[name].items():
        assert getattr(loss_fn, key) == value
    loss = loss_fn(*_example_inputs(loss_fn.kind))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown objective 'warp'.*'bpr'.*'ccl'.*'lcron'") as info:
        build_objective("warp")
    assert isinstance(info.value, ConfigError)


def test_unknown_hyper_parameter_is_named():
    with pytest.raises(ValueError, match=r"objective 'psl': unknown hyper-parameter\(s\) \['temprature'\]"):
        build_objective("psl", temprature=0.1)


def test_missing_required_hyper_parameter(monkeypatch):
    class NeedsK(torch.nn.Module):
        def __init__(self, k: int, temperature: float = 1.0) -> None:
            super().__init__()

    monkeypatch.setitem(OBJECTIVES, "needs_k", NeedsK)
    with pytest.raises(ValueError, match=r"objective 'needs_k': missing .*\['k'\]"):
        build_objective("needs_k")


def test_invalid_value_is_reported_with_the_objective_name():
    with pytest.raises(ValueError, match="objective 'ccl': margin must be"):
        build_objective("ccl", margin=2.0)


def test_package_reexports():
    for name in (
        "CosineContrastiveLoss",
        "PairwiseSoftmaxLoss",
        "ConfidenceRankingLoss",
        "WelfareRankLoss",
        "LCRONLoss",
        "build_objective",
        "OBJECTIVES",
    ):
        assert hasattr(objectives, name)
