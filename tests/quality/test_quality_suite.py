"""The quality suite (``benchmarks/quality_suite.py``) in ``make test``: every model kind with every
objective it takes beats its trivial floor by its margin and lands within its band of the value
recorded in ``benchmarks/quality_suite.toml``, in either direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankforge.benchmarks.quality_suite import Case, Suite, cases, load_recorded
from rankforge.training.objectives.ccl import CosineContrastiveLoss

RECORDED = load_recorded()
CASES = cases()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return Suite(tmp_path_factory.mktemp("quality"))


def _problems(suite: Suite, case: Case) -> list[str]:
    outcome = suite.run(case)
    return [
        problem
        for metric, record in RECORDED[case.name].items()
        for problem in record.problems(metric, outcome.values[metric], outcome.floors[metric])
    ]


def test_every_case_and_check_has_one_record() -> None:
    declared = {(c.name, metric) for c in CASES for metric in c.checks}
    recorded = {(name, metric) for name, metrics in RECORDED.items() for metric in metrics}
    assert declared == recorded
    # every retrieval kind x every retrieval objective, the CTR and auction objectives, the cascade
    assert {"retrieval/ccl", "mf/ccl", "simplex/ccl", "simplex/bpr", "ranking/confidence_ranking"} <= {
        c.name for c in CASES
    }
    assert {"auction/welfare_rankloss", "auction/bce", "cascade/lcron"} <= {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_beats_its_floor_and_holds_its_recorded_value(suite: Suite, case: Case) -> None:
    problems = _problems(suite, case)
    assert not problems, f"{case.name}: " + "; ".join(problems)


def test_a_deliberately_broken_objective_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CCL whose positive term pushes each positive *away* from its user: a sign slip in a loss
    def broken(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hinge = torch.relu(neg - self.margin).masked_fill(~mask, 0.0)
        count = mask.sum(dim=-1).clamp_min(1).to(hinge.dtype)
        return (torch.relu(1.0 + pos) + self.negative_weight * hinge.sum(-1) / count).mean()

    monkeypatch.setattr(CosineContrastiveLoss, "from_scores", broken)
    case = next(c for c in CASES if c.name == "mf/ccl")
    problems = _problems(Suite(tmp_path), case)
    assert any("does not beat its floor" in p for p in problems), problems
    assert any("below its recorded" in p for p in problems), problems
