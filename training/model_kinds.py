"""One declaration per model kind, read by the config, the trainer and the job.

A model kind (``[model] kind`` of a training config) says which objectives fit it (their input
contract: ``training.objectives``), what it exports and under which registered name, which
validation metrics can select its epochs, how its model is built and how its batches are drawn
(which also names its task: ``training.tasks``). Everything that differs between kinds is here,
as the objectives declare their ``kind`` in ``training.objectives.registry``; adding a kind is one
entry below plus its model module in ``models/``.

Builders import the model modules when called, so declaring kinds (and validating a config
against them) does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from rankforge.features.pipeline import PreparedData
    from rankforge.models.cascade import CascadeModel
    from rankforge.models.ranking import RankingModel
    from rankforge.models.retrieval import RetrievalModel
    from rankforge.models.scoring import Scoring
    from rankforge.training.config import ModelConfig

    Model = RetrievalModel | RankingModel | CascadeModel

#: What a kind exports: a retrieval bundle, a ranker bundle, or both stages of a cascade.
Exports = Literal["retrieval", "ranker", "cascade"]
#: How a kind's batches are drawn, and so which task computes its loss (``training.tasks``).
Batching = Literal["retrieval", "ranking", "cascade", "auction"]
Builder = Callable[["ModelConfig", "PreparedData", "torch.device | None", "Scoring"], "Model"]

RETRIEVAL_METRICS = frozenset(f"{m}@{k}" for m in ("recall", "ndcg", "hitrate", "mrr") for k in (10, 20))
RANKING_METRICS = frozenset({"auc", "gauc", "logloss", "ece"})
AUCTION_METRICS = frozenset(
    {"welfare_ratio", "expected_welfare", "realized_welfare", "expected_revenue", "realized_revenue"}
    | {"auc", "logloss"}
)
CASCADE_METRICS = frozenset(
    {f"retrieval_{m}" for m in RETRIEVAL_METRICS}
    | {f"ranker_{m}" for m in RANKING_METRICS}
    | {f"end_to_end_{m}@10" for m in ("recall", "ndcg", "hitrate", "mrr")}
)
LOWER_IS_BETTER = frozenset({"logloss", "ece"})


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    ``objective_kinds``: the objective input contracts its task feeds (empty: not trained, e.g.
    counted from the data); ``registered_name``: the default registry name (a cascade registers
    ``{name}-retrieval`` and ``{name}-ranker``); ``selection_metrics``: what its validation
    reports (a config's ``selection_metric`` must be one); ``build``: its model from a config and
    the prepared data (``device=meta`` leaves the tables for sharding), None when untrained."""

    name: str
    objective_kinds: tuple[str, ...]
    exports: Exports
    registered_name: str
    selection_metrics: frozenset[str]
    default_selection: str
    batching: Batching
    build: Builder | None
    summary: str
    # whether its model reads the data's declared features (``[[data.features]]``); a trained kind
    # that reads ids only refuses a config declaring them rather than silently ignore them
    reads_features: bool = True

    @property
    def trained(self) -> bool:
        return bool(self.objective_kinds)

    @property
    def retrieval(self) -> bool:
        """Scores users against items by inner product: per-example or shared retrieval negatives."""
        return self.exports == "retrieval"


# -- builders (model modules imported when called) -------------------------------------------------


def _two_tower(config: ModelConfig, data: PreparedData, device, scoring) -> Model:
    from rankforge.models.inputs import sparse_features
    from rankforge.models.two_tower import TwoTower

    users, items = sparse_features(data.inputs, "user"), sparse_features(data.inputs, "item")
    return TwoTower(
        users,
        items,
        config.embedding_dim,
        tuple(config.tower_sizes),
        device=device,
        scoring=scoring,
        init_std=config.init_std,
    )


def _matrix_factorization(config: ModelConfig, data: PreparedData, device, scoring) -> Model:
    from rankforge.models.matrix_factorization import MatrixFactorization

    return MatrixFactorization(
        data.n_users,
        data.n_items,
        config.embedding_dim,
        scoring,
        config.init_std,
        device=device,
        dropout=config.dropout or 0.0,
    )


def _simplex(config: ModelConfig, data: PreparedData, device, scoring) -> Model:
    from rankforge.models.simplex import SimpleX

    return SimpleX(
        data.n_users,
        data.n_items,
        config.embedding_dim,
        config.gamma,
        0.1 if config.dropout is None else config.dropout,
        scoring,
        config.init_std,
        device=device,
        aggregator=config.aggregator,
        history_table=config.history_table,
        attention_pad_length=config.attention_pad_length,
    )


def _dlrm(config: ModelConfig, data: PreparedData, device, scoring) -> Model:
    from rankforge.models.inputs import sparse_features
    from rankforge.models.ranking import RankingModel

    sparse = sparse_features(data.inputs, "user") + sparse_features(data.inputs, "item")
    return RankingModel(
        sparse,
        data.inputs.dense_features,
        config.embedding_dim,
        tuple(config.dense_sizes),
        tuple(config.over_sizes),
        device=device,
    )


def _cascade(config: ModelConfig, data: PreparedData, device, scoring) -> Model:
    from rankforge.models.cascade import CascadeModel

    return CascadeModel(_two_tower(config, data, device, scoring), _dlrm(config, data, device, scoring))


def _retrieval(name: str, build: Builder | None, summary: str, reads_features: bool = True) -> ModelKind:
    """A retrieval kind: scores users against items, exported and served as a retrieval bundle."""
    return ModelKind(
        name,
        objective_kinds=("retrieval",) if build is not None else (),
        exports="retrieval",
        registered_name="rankforge-retrieval",
        selection_metrics=RETRIEVAL_METRICS,
        default_selection="recall@20",
        batching="retrieval",
        build=build,
        summary=summary,
        reads_features=reads_features,
    )


MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        _retrieval(
            "retrieval",
            _two_tower,
            "two-tower: each id embedding plus an MLP over the id, history and declared features",
        ),
        _retrieval(
            "mf",
            _matrix_factorization,
            "matrix factorisation: a user table and an item table",
            reads_features=False,
        ),
        _retrieval(
            "simplex",
            _simplex,
            "SimpleX: MF plus a gated aggregation of the user's history",
            reads_features=False,
        ),
        _retrieval(
            "popularity",
            None,
            "the most popular unseen items, counted (the floor of a quality table)",
            reads_features=False,
        ),
        ModelKind(
            "ranking",
            objective_kinds=("ctr",),
            exports="ranker",
            registered_name="rankforge-ranker",
            selection_metrics=RANKING_METRICS,
            default_selection="auc",
            batching="ranking",
            build=_dlrm,
            summary="DLRM ranker over user, item and context features",
        ),
        ModelKind(
            "cascade",
            objective_kinds=("cascade",),
            exports="cascade",
            registered_name="rankforge",
            selection_metrics=CASCADE_METRICS,
            default_selection="retrieval_recall@20",
            batching="cascade",
            build=_cascade,
            summary="a two-tower and a DLRM scoring the same candidate lists, trained as one (LCRON)",
        ),
        ModelKind(
            "auction",
            objective_kinds=("auction", "ctr"),
            exports="ranker",
            registered_name="rankforge-ad-ranker",
            selection_metrics=AUCTION_METRICS,
            # welfare_ratio when the auctions are simulated (true CTRs known): see TrainConfig.selection
            default_selection="realized_welfare",
            batching="auction",
            build=_dlrm,
            summary="a DLRM ad ranker trained on whole auctions",
        ),
    )
}


def model_kind(name: str) -> ModelKind:
    """The declared kind ``name``; a ``ValueError`` listing the kinds otherwise."""
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; kinds: {sorted(MODEL_KINDS)}") from None
