"""The training job's typed configuration: one file (TOML or YAML) describes a whole scheduled run.

Every section forbids unknown keys, so a typo (``epoch = 3``) fails at load time with the key's
dotted path instead of being silently ignored. The objective is resolved against its registry
here too, so a wrong loss name or hyper-parameter never reaches a running job.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rankforge.bundles.ann_index import IndexConfig
from rankforge.config_errors import describe
from rankforge.errors import ConfigError
from rankforge.features.auction_simulator import AuctionSimulation
from rankforge.features.pipeline import DataConfig, under
from rankforge.training.model_kinds import LOWER_IS_BETTER, MODEL_KINDS, ModelKind, model_kind

#: The model kinds and everything that differs between them: ``training.model_kinds``.
SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise")
#: What TorchRec's EmbeddingBagCollectionSharder offers with a fused kernel on CPU (torchrec 1.8):
#: row-wise variants are CUDA-only there.
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    kind: str  # a declared model kind (training.model_kinds.MODEL_KINDS)
    embedding_dim: int = Field(32, ge=1)
    # retrieval (two-tower)
    tower_sizes: list[int] = Field(default_factory=lambda: [64, 32], min_length=1)
    # retrieval / mf / simplex: N(0, init_std) table init (None: TorchRec's default uniform)
    init_std: float | None = Field(None, gt=0)
    # simplex: the gating weight g of h_u = g e_u + (1 - g) V agg(history); the aggregator (mean or
    # the authors' user attention); the history's table (the item table, or one of its own);
    # attention_pad_length: padding slots in the attention softmax as in the authors' code (0: none)
    gamma: float = Field(0.5, ge=0, le=1)
    aggregator: Literal["mean", "user_attention"] = "mean"
    history_table: Literal["shared", "separate"] = "shared"
    attention_pad_length: int = Field(0, ge=0)
    # mf / simplex: dropout on the normalised user vector while training (None: 0.1 for simplex,
    # none for mf)
    dropout: float | None = Field(None, ge=0, lt=1)
    # ranking (DLRM)
    dense_sizes: list[int] = Field(default_factory=lambda: [32], min_length=1)
    over_sizes: list[int] = Field(default_factory=lambda: [64, 1], min_length=1)

    @field_validator("tower_sizes", "dense_sizes", "over_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be >= 1, got {sizes}")
        return sizes

    @field_validator("kind")
    @classmethod
    def _declared(cls, kind: str) -> str:
        model_kind(kind)
        return kind

    @property
    def declared(self) -> ModelKind:
        """This model's kind: what trains it, what it exports, how it is built and batched."""
        return MODEL_KINDS[self.kind]

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind in ("ranking", "cascade") and self.over_sizes[-1] != 1:
            raise ValueError("over_sizes must end with 1 (a single logit)")
        return self


#: The reference that is not a model: each item's smoothed positive rate in the training data.
ITEM_RATE = "item_rate"


def model_spec(text: str | None, folder: Path) -> str | None:
    """A model named in a config: a registry URI as it is, a bundle path relative to the config
    file's folder (like every other path in a config)."""
    if text is None or text.startswith("models:/") or text == ITEM_RATE:
        return text
    return str(under(folder, Path(text)))


class ObjectiveConfig(_Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # confidence_ranking: the model the new one must beat example by example, normally the one
    # serving now: a registry URI (models:/rankforge-ranker@champion, models:/rankforge-ranker/3),
    # a ranker bundle directory, or "item_rate" (each item's smoothed positive rate, no model).
    # welfare_rankloss: the teacher whose CTRs calibrate the weights (optional).
    reference: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _reference_fits(self) -> ObjectiveConfig:
        """Whether an objective takes a reference model is declared by the objective itself
        (its ``reference_model``: "required", "optional" or none)."""
        from rankforge.training.objectives import OBJECTIVES

        takes = getattr(OBJECTIVES.get(self.name), "reference_model", None)
        if takes == "required" and self.reference is None:
            raise ValueError(
                f"objective {self.name!r} needs objective.reference: the previous model "
                '("models:/rankforge-ranker@champion", a version, a bundle path) or "item_rate"'
            )
        if takes is None and self.reference is not None:
            raise ValueError(f"objective {self.name!r} uses no reference model; drop objective.reference")
        return self


class OptimizerConfig(_Section):
    dense: Literal["adam", "adamw"] = "adam"
    dense_lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # Embedding tables: FBGEMM's row-wise Adagrad fused into the backward, or Adam as the papers
    # use it (FBGEMM's fused Adam on GPUs; on CPU, where FBGEMM has no Adam, the tables are
    # replicated data-parallel and stepped by torch's fused Adam with the dense layers).
    sparse: Literal["exact_rowwise_adagrad", "adam"] = "exact_rowwise_adagrad"
    sparse_lr: float = Field(0.05, gt=0)
    sparse_eps: float = Field(1e-8, gt=0)
    # L2 penalty on the embeddings a batch looks up: l2 * sum ||e||^2 / batch (LightGCN, SimpleX)
    embedding_l2: float = Field(0.0, ge=0)
    # L2 on whole tables, lambda / 2 * ||W||^2 added to every step's loss (the SimpleX authors'
    # embedding_regularizer; Adam's coupled weight decay); replicated (Adam on CPU) tables only
    embedding_weight_decay: float = Field(0.0, ge=0)
    # clip the global gradient norm of the unfused parameters (the SimpleX authors clip at 10)
    max_grad_norm: float | None = Field(None, gt=0)
    # learning-rate schedule, applied to every optimizer: over the configured epochs (constant,
    # cosine, linear, each after `warmup_steps`), or "plateau": times `plateau_factor` (not below
    # `min_lr`) after each validation that does not improve, restarting from the best weights
    # (the SimpleX authors' reduce-on-plateau)
    schedule: Literal["constant", "cosine", "linear", "plateau"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    min_lr: float = Field(1e-6, ge=0)


class TrainingConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)  # global: every step splits it across the ranks
    # Model selection on the validation split (data.validation_fraction > 0), never on the test set:
    # the best epoch by `selection_metric` is kept; training stops after `patience` epochs without
    # improvement (None: run every epoch).
    selection_metric: str | None = None  # default: recall@20 (retrieval), auc (ranking), retrieval_recall@20
    patience: int | None = Field(None, ge=1)
    validate_every: int = Field(1, ge=1)
    # Wall-clock budget of the whole job (data preparation to registered bundle): no epoch starts
    # that would not finish, with its validation and the final test, inside it. None: no budget.
    time_budget_minutes: float | None = Field(None, gt=0)
    # torch intra-op threads for this job (None: torch's default). Recorded with the run.
    threads: int | None = Field(None, ge=1)
    # Start from a trained model's weights instead of a random init: a registry URI or a bundle
    # directory of the same model kind and sizes. Rows are matched by raw id (users and items
    # the old model never saw keep their fresh init), so the new data may have grown.
    warm_start: str | None = Field(None, min_length=1)


class NegativesConfig(_Section):
    # per example; 0 (ranking only) trains on the logged labels alone (explicit negatives)
    count: int = Field(16, ge=0)
    distribution: Literal["uniform", "popularity"] = "uniform"
    popularity_power: float = Field(0.75, ge=0)  # weights = (train events + 1) ** power
    # with distribution = "popularity": the share of each example's negatives drawn uniformly
    # instead (mixed negative sampling: easy catalogue negatives beside hard popular ones)
    uniform_share: float = Field(0.0, ge=0, le=1)
    # retrieval only: one pool of `count` negatives for the whole batch ([N, D]) instead of per example
    shared: bool = False
    # retrieval, per example: which sampled items do not count as negatives. "positive": a
    # negative equal to the example's own item is masked out; "user_positives": any item the user
    # has a training positive with is drawn again (the IR-Benchmark sampler of the PSL paper)
    exclude: Literal["positive", "user_positives"] = "positive"


class ShardingConfig(_Section):
    planner: Literal["greedy", "grid_search", "uniform"] = "greedy"  # the planner's proposer
    compute_kernel: Literal["fused", "fused_uvm", "fused_uvm_caching"] = "fused"
    # The types the planner may choose from; on CPU the ones FBGEMM lacks there are dropped.
    sharding_types: list[
        Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"]
    ] = Field(default_factory=lambda: ["table_wise", "row_wise", "column_wise"], min_length=1)


class MlflowConfig(_Section):
    # default: one experiment per model kind and data source, e.g. rankforge-mf-lightgcn
    experiment: str | None = Field(None, min_length=1)
    registered_model: str | None = None  # default: rankforge-retrieval / rankforge-ranker
    alias: str | None = "champion"  # set only on a model's first version; later ones await evaluation
    register_model: bool = True  # false: log the bundle as run artifacts only


class AuctionConfig(_Section):
    """Where an ``auction`` model's training auctions come from (schema: ``features.auctions``);
    the users' and ads' features come from the ``[data]`` log, whose items are the ads."""

    path: Path | None = None  # an auction log, parquet or CSV
    simulate: AuctionSimulation | None = None  # or simulated over the synthetic [data] world
    test_fraction: float = Field(0.2, gt=0, lt=1)  # whole auctions, by a hash of the auction id
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    split_seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> AuctionConfig:
        if (self.path is None) == (self.simulate is None):
            raise ValueError("auctions: give exactly one of path (an auction log) or simulate")
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError("auctions: test_fraction + validation_fraction must leave training auctions")
        return self


class CheckpointConfig(_Section):
    resume: bool = True  # pick up an interrupted job's last checkpoint in output_dir
    keep: int = Field(2, ge=1)
    # write one every N epochs (and after the last): a resumed job re-trains at most N - 1 epochs,
    # exactly as the first time (every random draw is in the checkpoint)
    every: int = Field(1, ge=1)


class TrainConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig
    objective: ObjectiveConfig | None = None  # required, except for untrained kinds (popularity)
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    negatives: NegativesConfig = NegativesConfig()
    sharding: ShardingConfig = ShardingConfig()
    mlflow: MlflowConfig = MlflowConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    auctions: AuctionConfig | None = None  # model kind "auction" only
    serving_index: IndexConfig = IndexConfig()  # retrieval bundles: exact search or an ANN index
    seed: int = 0
    output_dir: Path = Path("runs/train")
    source_path: Path | None = Field(None, exclude=True)  # the file it was read from, for logging

    @model_validator(mode="after")
    def _objective_fits_model(self) -> TrainConfig:
        from rankforge.training.losses import resolve_objective

        kind = self.model.declared
        if not kind.trained:
            if self.objective is not None:
                raise ValueError(
                    f"model kind {self.model.kind!r} trains nothing: drop the [objective] section"
                )
            return self
        if self.objective is None:
            raise ValueError(
                f"objective is required for model kind {self.model.kind!r} ([objective] name = ...)"
            )
        try:
            resolve_objective(self.objective.name, self.objective.params, kind.objective_kinds)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _features_fit_model(self) -> TrainConfig:
        kind = self.model.declared
        if kind.trained and not kind.reads_features and self.data.features:
            names = [f.name for f in self.data.features]
            raise ValueError(
                f"model kind {kind.name!r} reads ids only, not the declared feature(s) {names}: "
                "remove [[data.features]] or use kind 'retrieval' (a two-tower reads them)"
            )
        return self

    @model_validator(mode="after")
    def _auctions_fit_model(self) -> TrainConfig:
        if (self.model.kind == "auction") != (self.auctions is not None):
            raise ValueError("model kind 'auction' and the [auctions] section go together")
        if (
            self.auctions is not None
            and self.auctions.simulate is not None
            and self.data.source != "synthetic"
        ):
            raise ValueError(
                "auctions.simulate draws from the synthetic world: set data.source = 'synthetic'"
            )
        return self

    @model_validator(mode="after")
    def _plateau_needs_validation(self) -> TrainConfig:
        if self.optimizer.schedule == "plateau" and self.data.validation_fraction <= 0 and not self.auctions:
            raise ValueError(
                "optimizer.schedule = 'plateau' reacts to validation: set data.validation_fraction > 0"
            )
        return self

    @model_validator(mode="after")
    def _negatives_fit_model(self) -> TrainConfig:
        if self.negatives.count == 0 and self.model.kind != "ranking":
            raise ValueError(f"negatives.count = 0 only applies to ranking, not {self.model.kind!r}")
        if self.negatives.exclude == "user_positives" and (
            self.negatives.shared or not self.model.declared.retrieval
        ):
            raise ValueError(
                "negatives.exclude = 'user_positives' applies to per-example retrieval negatives "
                "(negatives.shared = false)"
            )
        return self

    @model_validator(mode="after")
    def _selection_metric_is_reported(self) -> TrainConfig:
        name = self.training.selection_metric
        metrics = self.model.declared.selection_metrics
        if name is not None and name not in metrics:
            raise ValueError(
                f"training.selection_metric {name!r} is not a {self.model.kind} validation metric; "
                f"use one of {sorted(metrics)}"
            )
        return self

    @property
    def selection(self) -> tuple[str, bool]:
        """(validation metric that selects the best epoch, whether higher is better)."""
        default = self.model.declared.default_selection
        if self.auctions is not None and self.auctions.simulate is not None:
            default = "welfare_ratio"
        name = self.training.selection_metric or default
        return name, name.removeprefix("ranker_") not in LOWER_IS_BETTER

    @property
    def experiment(self) -> str:
        """The MLflow experiment: the configured one, else ``rankforge-{kind}[-{source}]``, so
        retrieval, ranking, cascade and own-data runs do not pile up in one list."""
        if self.mlflow.experiment:
            return self.mlflow.experiment
        source = "" if self.data.source == "synthetic" else f"-{self.data.source}"
        return f"rankforge-{self.model.kind}{source}"

    @property
    def registered_model(self) -> str:
        return self.mlflow.registered_model or self.model.declared.registered_name

    def fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed: everything that shapes the weights."""
        shaping = self.model_dump(
            mode="json", include={"data", "model", "objective", "optimizer", "negatives", "auctions", "seed"}
        )
        shaping["batch_size"] = self.training.batch_size
        return json.dumps(shaping, sort_keys=True)


def parse_config(raw: dict[str, Any], origin: str = "config") -> TrainConfig:
    """Validate a mapping; every problem is reported with its dotted key, on one line."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe(exc, TrainConfig)}") from exc


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``.toml`` or ``.yaml``/``.yml`` training config.

    Relative paths in it (``data.path``, ``data.items_path``, ``output_dir``) are relative to the
    config file's folder, so a config means the same from any working directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: config must be .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    config = parse_config(raw, str(path))
    folder = path.parent
    objective = config.objective
    if objective is not None:
        objective = objective.model_copy(update={"reference": model_spec(objective.reference, folder)})
    training = config.training.model_copy(
        update={"warm_start": model_spec(config.training.warm_start, folder)}
    )
    auctions = config.auctions
    if auctions is not None:
        auctions = auctions.model_copy(update={"path": under(folder, auctions.path)})
    return config.model_copy(
        update={
            "source_path": path.resolve(),
            "data": config.data.relative_to(folder),
            "output_dir": under(folder, config.output_dir),
            "objective": objective,
            "training": training,
            "auctions": auctions,
        }
    )
