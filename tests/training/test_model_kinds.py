"""The model kinds are declared once (training.model_kinds): every kind is complete, and the config,
the builder and the trainer all read that one declaration."""

from __future__ import annotations

import pytest

from rankforge.features.pipeline import PreparedData
from rankforge.models.cascade import CascadeModel
from rankforge.models.ranking import RankingModel
from rankforge.models.retrieval import RetrievalModel
from rankforge.training.config import parse_config
from rankforge.training.model_kinds import MODEL_KINDS, model_kind
from rankforge.training.objectives import OBJECTIVES
from rankforge.training.tasks import build_model

EXPORTED = {"retrieval": RetrievalModel, "ranker": RankingModel, "cascade": CascadeModel}


def test_the_declared_kinds() -> None:
    assert sorted(MODEL_KINDS) == [
        "auction",
        "cascade",
        "mf",
        "popularity",
        "ranking",
        "retrieval",
        "simplex",
    ]


@pytest.mark.parametrize("name", sorted(MODEL_KINDS))
def test_every_kind_is_complete(name: str, small_data: PreparedData) -> None:
    kind = MODEL_KINDS[name]
    assert kind.name == name and kind.summary and kind.registered_name
    assert kind.default_selection in kind.selection_metrics
    assert kind.batching in ("retrieval", "ranking", "cascade", "auction")
    assert kind.retrieval == (kind.exports == "retrieval")
    if not kind.trained:
        assert kind.build is None
        return
    fitting = [
        n
        for n, cls in OBJECTIVES.items()
        if getattr(cls, "kind", None) in kind.objective_kinds
        and getattr(cls, "reference_model", None) != "required"
    ]
    assert fitting, f"no registered objective fits {name}"
    config = {
        "model": {"kind": name, "embedding_dim": 8, "tower_sizes": [8]},
        "objective": {"name": fitting[0]},
    }
    if name == "auction":
        config["auctions"] = {"simulate": {"n_auctions": 10}}
    parsed = parse_config(config)
    assert parsed.model.declared is kind and parsed.registered_model == kind.registered_name
    model = build_model(parsed.model, small_data)
    assert isinstance(model, EXPORTED[kind.exports])


def test_an_unknown_kind_names_the_declared_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model kind 'gnn'; kinds: \['auction'"):
        model_kind("gnn")
    with pytest.raises(ValueError, match="unknown model kind 'gnn'"):
        parse_config({"model": {"kind": "gnn"}, "objective": {"name": "bpr"}})
