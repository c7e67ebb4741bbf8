"""The feature pipeline: raw log in, everything training and serving need out.

One entry point (:func:`prepare`) so the batch trainer, the evaluation job and the feature-store
writer all see the same ids, splits and features for a given :class:`DataConfig`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rankforge.config_errors import describe
from rankforge.errors import ConfigError, DataError
from rankforge.features import history as hist
from rankforge.features.aggregates import item_aggregates, user_aggregates
from rankforge.features.coverage import Coverage, held_out_coverage
from rankforge.features.declared_features import (
    context_features,
    declared_columns,
    fit_context,
    read_side_table,
    side_table_path,
    vocabulary_digest,
    with_context,
    with_sequences,
)
from rankforge.features.feature_spec import (
    ContextInput,
    Feature,
    InputLayout,
    SideTable,
    check_unique,
    input_layout,
)
from rankforge.features.id_mapping import IdMapping
from rankforge.features.loaders import (
    load_interactions,
    load_ir_benchmark_split,
    load_lightgcn_split,
    load_movielens_items,
)
from rankforge.features.log_spec import LogSpec, read_log
from rankforge.features.schema import ITEM, ITEM_IDX, LABEL, RATING, TIMESTAMP, USER, USER_IDX
from rankforge.features.sequences import PositiveSequences
from rankforge.features.splits import global_time_split, leave_last_out, random_leave_out
from rankforge.features.synthetic import generate_log

if TYPE_CHECKING:  # torch loads with the auction tensors, only where auctions are used
    from rankforge.features.auctions import AuctionTensors

ORDER = [TIMESTAMP, USER_IDX, ITEM_IDX]


def under(folder: Path, path: Path | None) -> Path | None:
    """``path`` if absolute (or None), else ``folder / path`` normalised."""
    if path is None or path.is_absolute():
        return path
    return Path(os.path.normpath(folder / path))


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_users: int = Field(300, ge=1)
    n_items: int = Field(400, ge=2)
    n_clusters: int = Field(6, ge=1)
    min_events: int = Field(10, ge=1)
    max_events: int = Field(40, ge=1)
    seed: int = 0


#: Sources that ship their own train/test split (``split = "provided"`` keeps it), and its reader.
PROVIDED_SPLITS = {"lightgcn": load_lightgcn_split, "ir_benchmark": load_ir_benchmark_split}
#: Sources whose provided split is given as files beside the log (``data.test_path``).
FILE_SPLITS = ("file",)


class DataConfig(BaseModel):
    """Where the log comes from and how it becomes examples."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["synthetic", "movielens", "lightgcn", "ir_benchmark", "file", "prepared"] = "synthetic"
    # movielens/lightgcn: a directory; file: a log file; prepared: the directory `rankforge
    # prepare` wrote (out of core: the examples stay on disk, see features.out_of_core)
    path: Path | None = None
    layout: (
        Literal["movielens-csv", "movielens-dat", "movielens-100k", "lightgcn", "ir-benchmark", "parquet"]
        | None
    ) = None
    items_path: Path | None = None  # optional item catalogue (movies.csv layout)
    # Side tables of user / item attributes, and the features declared on them (see
    # rankforge.features.feature_spec). Without item_table, the source's catalogue (synthetic,
    # MovieLens movies.csv, items_path) is the item table.
    user_table: SideTable | None = None
    item_table: SideTable | None = None
    features: list[Feature] = Field(default_factory=list)
    synthetic: SyntheticConfig = SyntheticConfig()
    split: Literal["leave_last_out", "time", "random", "provided"] = "leave_last_out"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    # split=time: events at or after this timestamp (the log's unit) are the test set, instead of
    # the last test_fraction of time
    test_from: int | None = None
    n_test_per_user: int = Field(1, ge=1)
    positive_threshold: float = 4.0  # rating >= threshold is a positive; logs without ratings: all
    # source = "file": your own log's columns and label rule (CSV with any names, parquet, NDJSON)
    log: LogSpec | None = None
    # split = "provided" with source = "file": the held-out files that ship with the log (read with
    # the same [data.log]); without validation_path the validation part is carved from `path`
    test_path: Path | None = None
    validation_path: Path | None = None
    history_len: int = Field(20, ge=1)
    # Model selection data, carved from the *training* part (the test set is never looked at while
    # training): > 0 holds out that fraction of each user's training events at random (split
    # random/provided), the last fraction of training time (split time), or each user's last
    # n_test_per_user training events (split leave_last_out).
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    validation_seed: int = 1
    # Which history a retrieval training example carries: the user's positives strictly before
    # the example ("point_in_time", leakage-free, the default) or the user's latest training
    # history as served, without the example's own item ("latest": SimpleX's reference code,
    # which feeds every example the user's other interacted items; right for logs without
    # meaningful time such as the LightGCN splits).
    training_history: Literal["point_in_time", "latest"] = "point_in_time"

    @classmethod
    def from_file(cls, path: str | Path) -> DataConfig:
        """A data config from TOML, YAML or JSON: the file's ``data`` section (as in a training
        config) or, if it has none, the whole file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"data config not found: {path}")
        text = path.read_text()
        try:
            raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of data settings")
        try:
            return cls.model_validate(raw.get("data", raw)).relative_to(path.parent)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {describe(exc, cls)}") from exc

    def relative_to(self, folder: Path) -> DataConfig:
        """This config with its relative file paths taken from ``folder`` (the config file's), so a
        config works from any working directory."""
        return self.model_copy(
            update={
                "path": under(folder, self.path),
                "items_path": under(folder, self.items_path),
                "test_path": under(folder, self.test_path),
                "validation_path": under(folder, self.validation_path),
                "user_table": side_table_path(self.user_table, folder),
                "item_table": side_table_path(self.item_table, folder),
            }
        )

    @property
    def string_ids(self) -> bool:
        """Whether the log's ids are strings (``data.log.ids = "string"``): side tables too."""
        return self.log is not None and self.log.ids == "string"

    @property
    def label_threshold(self) -> float:
        """The value a log's rating/label column must reach to be a positive (a log spec's rule,
        else ``positive_threshold``; implicit logs have no label column, so every event counts)."""
        if self.log is not None and self.log.positive_threshold is not None:
            return self.log.positive_threshold
        return self.positive_threshold

    def portable(self) -> dict:
        """The config as JSON with every file path absolute: what a bundle records of the data it
        was trained on, so ``materialize`` can featurise the same log for it from anywhere."""

        def absolute(tree: object, key: str = "") -> object:
            if isinstance(tree, dict):
                return {k: absolute(v, k) for k, v in tree.items()}
            if isinstance(tree, list):
                return [absolute(v) for v in tree]
            if isinstance(tree, str) and (key == "path" or key.endswith("_path")):
                return str(Path(tree).resolve())
            return tree

        return cast(dict, absolute(self.model_dump(mode="json")))

    def describe(self) -> str:
        """The data set in words: source (with its path or generator settings) and split."""
        if self.source == "synthetic":
            s = self.synthetic
            origin = f"synthetic(users={s.n_users}, items={s.n_items}, seed={s.seed})"
        else:
            origin = f"{self.source}:{self.path.resolve() if self.path is not None else ''}"
        return f"{origin} split={self.split}"

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source != "synthetic" and self.path is None:
            raise ValueError(f"data.path is required for source={self.source!r}")
        if self.log is not None and self.source != "file":
            raise ValueError(f"data.log describes a log file: set data.source = 'file', not {self.source!r}")
        if self.test_from is not None and self.split != "time":
            raise ValueError(f"data.test_from only applies to split='time', got split={self.split!r}")
        check_unique(self.features)
        if any(f.side == "context" for f in self.features) and self.log is None:
            raise ValueError(
                "context features come from your own log's columns: give data.source = 'file' and data.log"
            )
        if self.split == "provided" and self.source in FILE_SPLITS and self.test_path is None:
            raise ValueError("split='provided' with source='file' needs data.test_path (the test file)")
        if self.split == "provided" and self.source not in (*PROVIDED_SPLITS, *FILE_SPLITS):
            raise ValueError(
                "split='provided' only applies to source='lightgcn' (train.txt/test.txt), "
                "'ir_benchmark' (train.tsv/test.tsv) or 'file' (data.test_path beside data.path)"
            )
        if (self.test_path is not None or self.validation_path is not None) and (
            self.source not in FILE_SPLITS or self.split != "provided"
        ):
            raise ValueError(
                "data.test_path and data.validation_path go with source='file', split='provided'"
            )
        return self


@dataclass(frozen=True)
class AuctionSplits:
    """An auction log split by whole auctions, encoded with the interaction data's id mapping."""

    train: AuctionTensors
    validation: AuctionTensors | None
    test: AuctionTensors

    def split(self, name: str) -> AuctionTensors | None:
        return self.validation if name == "validation" else self.test


@dataclass(frozen=True)
class PreparedData:
    """Encoded events, examples and feature tables; every id is a dense index."""

    mapping: IdMapping
    inputs: InputLayout  # every model input: built-ins plus the declared features
    vocabularies: dict[str, pl.DataFrame]  # declared categorical feature -> (value, index)
    train_events: pl.DataFrame  # user_idx, item_idx, rating, timestamp, label
    test_events: pl.DataFrame
    retrieval_examples: pl.DataFrame  # train positives with point-in-time history
    ranking_examples: pl.DataFrame  # all labelled train events with point-in-time history
    user_features: pl.DataFrame  # user_idx, history (latest), user aggregates, declared user features
    item_features: pl.DataFrame  # item_idx (all items, ordered), item aggregates, declared item features
    history_len: int
    # carved from training for model selection (empty without data.validation_fraction)
    validation_events: pl.DataFrame | None = None
    training_history: str = "point_in_time"
    source: str = ""  # where the log came from and how it was split (see DataConfig.describe)
    auctions: AuctionSplits | None = None  # an auction model's auctions (train/validation/test)
    # out-of-core data (rankforge.features.out_of_core): "retrieval_examples"/"ranking_examples"
    # -> parquet shards the trainer streams; the two example frames above are then empty
    example_shards: dict[str, list[Path]] | None = None
    # ... whose rows carry n_before instead of a history: their histories are gathered from here
    sequences: PositiveSequences | None = None
    # "test" / "validation" -> which held-out events the metrics score and why not the others
    coverage: dict[str, Coverage] = field(default_factory=dict)
    # the config it was prepared from (None: loaded from a prepared directory)
    config: DataConfig | None = None

    @property
    def has_validation(self) -> bool:
        """Whether model selection has a validation split (events, or auctions)."""
        if self.auctions is not None:
            return self.auctions.validation is not None
        return self.validation_events is not None

    def fingerprint(self) -> dict[str, str]:
        """What a model trained on this data carries: the data set and the id-mapping digest. Models
        with different fingerprints come from different data and are not compared."""
        return {"source": self.source, "id_mapping": self.mapping.digest()}

    def vocabulary_digests(self) -> dict[str, str]:
        """Declared categorical feature -> a short hash of its vocabulary (which value has which
        index): a model reads another data set's indices of that feature only if they agree."""
        return {name: vocabulary_digest(vocab) for name, vocab in sorted(self.vocabularies.items())}

    @property
    def n_users(self) -> int:
        return self.mapping.n_users

    @property
    def n_items(self) -> int:
        return self.mapping.n_items

    @cached_property
    def raw_histories(self) -> pl.DataFrame:
        """``user_id`` -> latest history as raw item ids: model-independent, so any model's id
        mapping can encode it. Computed once per prepared dataset."""
        return (
            self.user_features.select(USER_IDX, hist.HISTORY)
            .with_row_index("_row")
            .explode(hist.HISTORY)
            .join(
                self.mapping.items, left_on=hist.HISTORY, right_on=ITEM_IDX, how="left", maintain_order="left"
            )
            .group_by("_row", maintain_order=True)
            .agg(pl.col(USER_IDX).first(), pl.col(ITEM).drop_nulls().alias(hist.HISTORY))
            .join(self.mapping.users, on=USER_IDX, how="inner")
            .select(USER, hist.HISTORY)
        )

    def test_positives(self) -> pl.DataFrame:
        return self.test_events.filter(pl.col(LABEL) > 0)

    def validation_positives(self) -> pl.DataFrame:
        if self.validation_events is None:
            raise DataError("no validation split: set data.validation_fraction > 0")
        return self.validation_events.filter(pl.col(LABEL) > 0)

    def known_events(self) -> pl.DataFrame:
        """Every event of the training part (train plus the carved validation): what a user is
        known to have interacted with when the test set is scored, so never recommended then."""
        if self.validation_events is None:
            return self.train_events
        return pl.concat([self.train_events, self.validation_events], how="vertical_relaxed")

    def seen_items(self) -> pl.DataFrame:
        """``user_idx`` -> ``seen`` (sorted distinct ``item_idx``): every item of the user's known
        events whatever their label. The one rule for what is never recommended: offline
        evaluation masks these items, and the server excludes them (the feature store's
        ``seen_items`` list) unless a request or deployment asks otherwise."""
        return (
            self.known_events()
            .group_by(USER_IDX)
            .agg(pl.col(ITEM_IDX).unique().sort().alias("seen"))
            .sort(USER_IDX)
        )


def ranking_frame(pairs: pl.DataFrame, data: PreparedData) -> pl.DataFrame:
    """Attach user and item features to (user_idx, item_idx) rows: the ranker's input table."""
    return pairs.join(data.user_features, on="user_idx", how="left").join(
        data.item_features, on="item_idx", how="left", suffix="_item"
    )


def raw_log(config: DataConfig) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    """(log, provided test log or None, the source's item catalogue or None), raw ids."""
    if config.source == "synthetic":
        s = config.synthetic
        log = generate_log(s.n_users, s.n_items, s.n_clusters, s.min_events, s.max_events, s.seed)
        return log.interactions, None, log.items
    assert config.path is not None
    items = load_movielens_items(config.items_path) if config.items_path else None
    if config.source == "movielens":
        directory = config.path
        candidates = [directory / n for n in ("ratings.csv", "ratings.dat", "u.data")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"no MovieLens ratings file (ratings.csv, ratings.dat or u.data) in {directory}")
        if items is None and (directory / "movies.csv").is_file():
            items = load_movielens_items(directory / "movies.csv")
        return load_interactions(found), None, items
    if config.source in PROVIDED_SPLITS:
        train, test = PROVIDED_SPLITS[config.source](config.path)
        if config.split == "provided":
            return train, test, items
        return pl.concat([train, test]), None, items
    if config.log is not None:
        test = _read_file_log(config, config.test_path) if config.test_path is not None else None
        return _read_file_log(config, config.path), test, items
    return load_interactions(config.path, config.layout), None, items


def _read_file_log(config: DataConfig, path: Path) -> pl.DataFrame:
    """One file of a ``source = "file"`` log (the log, or its provided test or validation file),
    read with ``data.log`` and the declared context features' columns kept."""
    assert config.log is not None
    return read_log(path, config.log, [f.source_column for f in context_features(config.features)])


def split_events(
    log: pl.LazyFrame,
    config: DataConfig,
    fraction: float,
    seed: int = 0,
    test_from: int | None = None,
    ordered: bool = False,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(train, held out) by ``config.split``, lazily: the whole log here, one user bucket out of
    core (leave-last-out and random splits are per user or per row; a time split is given its cut).
    Filters keep row order; ``ordered``: the log is in event order (``features.event_order``),
    which spares leave-last-out its sort."""
    if config.split == "leave_last_out":
        return leave_last_out(log, n_last=config.n_test_per_user, ordered=ordered)
    if config.split == "time":
        return global_time_split(log, fraction, test_from)
    # random, and provided splits (their validation is carved at random, as SimpleX does)
    return random_leave_out(log, fraction, seed=seed)


def _split(
    log: pl.DataFrame, config: DataConfig, fraction: float, seed: int = 0, test_from: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    train, held_out = split_events(log.lazy(), config, fraction, seed, test_from)
    return train.collect(), held_out.collect()


def encode_events(
    frame: pl.LazyFrame,
    mapping: IdMapping,
    threshold: float,
    context: tuple[ContextInput, ...],
    features: list[Feature],
) -> pl.LazyFrame:
    """Raw events as the pipelines use them: dense ids (unknown ids dropped, row order kept), the
    label, and each request-context feature normalised; the in-memory and out-of-core pipelines
    both call this."""
    return with_context(with_label(mapping.encode(frame), threshold), context, features)


def with_label(frame: pl.LazyFrame, threshold: float) -> pl.LazyFrame:
    # Logs without explicit ratings (LightGCN, clicks) are implicit feedback: every event is positive.
    label = pl.when(pl.col(RATING).is_null()).then(1).otherwise((pl.col(RATING) >= threshold).cast(pl.Int8))
    return frame.with_columns(label.cast(pl.Int8).alias(LABEL))


@dataclass(frozen=True)
class FeatureTablesOut:
    users: pl.DataFrame  # user_idx (every known user, in order), aggregates, history, declared
    items: pl.DataFrame  # item_idx, item_id, aggregates, declared
    vocabularies: dict[str, pl.DataFrame]
    layout: InputLayout


def feature_tables(
    config: DataConfig,
    mapping: IdMapping,
    users_table: pl.DataFrame | None,
    items_table: pl.DataFrame | None,
    user_stats: pl.LazyFrame,
    item_stats: pl.LazyFrame,
    context: tuple[ContextInput, ...],
    vocabularies: dict[str, pl.DataFrame] | None = None,
) -> FeatureTablesOut:
    """The user and item feature tables, vocabularies and input layout from per-user rows
    (aggregates and latest history, some users may lack them) and per-item aggregates (every
    item): one assembly for the in-memory and the out-of-core pipelines. ``vocabularies``: fixed
    ones to encode declared features with (the serving snapshot's), instead of fitting them."""
    user_declared, user_vocab = declared_columns(
        users_table, config.features, "user", mapping.users, USER, USER_IDX, "data.user_table", vocabularies
    )
    item_declared, item_vocab = declared_columns(
        items_table, config.features, "item", mapping.items, ITEM, ITEM_IDX, "data.item_table", vocabularies
    )
    users = (
        mapping.users.lazy()
        .select(USER_IDX)  # every known user, also one whose events all went to validation
        .join(user_stats, on=USER_IDX, how="left")
        .with_columns(pl.col(hist.HISTORY).fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
        .join(user_declared.lazy(), on=USER_IDX, how="left")
        .sort(USER_IDX)
        .collect()
    )
    items = (
        item_stats.join(item_declared.lazy(), on=ITEM_IDX, how="left")
        .join(mapping.items.lazy().select(ITEM, ITEM_IDX), on=ITEM_IDX, how="left")
        .sort(ITEM_IDX)
        .collect()
    )
    fitted = {**user_vocab, **item_vocab}
    users, sequence_vocab = with_sequences(users, items, config.features, fitted)
    fitted |= sequence_vocab
    sizes = {name: vocab.height for name, vocab in fitted.items()}
    layout = input_layout(
        config.features, mapping.n_users, mapping.n_items, config.history_len, sizes, context
    )
    return FeatureTablesOut(users, items.select(ITEM_IDX, ITEM, pl.exclude(ITEM_IDX, ITEM)), fitted, layout)


def provided_validation(config: DataConfig) -> pl.DataFrame | None:
    """The validation file that ships with a log (``data.validation_path``), read as the log is."""
    if config.validation_path is None or config.log is None:
        return None
    return _read_file_log(config, config.validation_path)


def _split_parts(
    log: pl.DataFrame, provided_test: pl.DataFrame | None, config: DataConfig
) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
    """(train, validation or None, test) raw events: the test part as provided or split off the
    log, then the validation part as provided or carved from the training part (never from the
    test part)."""
    if provided_test is not None:
        train_raw, test_raw = log, provided_test
    else:
        train_raw, test_raw = _split(log, config, config.test_fraction, test_from=config.test_from)
    if train_raw.height == 0:
        raise DataError("the split left no training events")
    if test_raw.height == 0:
        raise DataError("the split left no test events; lower n_test_per_user or raise test_fraction")
    validation = provided_validation(config)
    if validation is not None:
        if validation.height == 0:
            raise DataError(f"data.validation_path {config.validation_path} holds no events")
        return train_raw, validation, test_raw
    if config.validation_fraction <= 0:
        return train_raw, None, test_raw
    train_raw, validation_raw = _split(
        train_raw, config, config.validation_fraction, seed=config.validation_seed
    )
    if validation_raw.height == 0 or train_raw.height == 0:
        raise DataError(
            f"data.validation_fraction={config.validation_fraction} left an empty validation or training part"
        )
    return train_raw, validation_raw, test_raw


def side_tables(
    config: DataConfig, items: pl.DataFrame | None
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """(the item table: ``data.item_table`` or the source's own catalogue; the user table)."""
    if config.item_table is not None:
        items = read_side_table(config.item_table, ITEM, config.string_ids)
    users = (
        read_side_table(config.user_table, USER, config.string_ids) if config.user_table is not None else None
    )
    return items, users


def prepare(config: DataConfig) -> PreparedData:
    """Load, split, encode and featurise a log according to ``config``."""
    if config.source == "prepared":
        from rankforge.features.out_of_core import load_prepared

        assert config.path is not None
        return load_prepared(config.path)
    log, provided_test, items = raw_log(config)
    items, users_table = side_tables(config, items)
    train_raw, validation_raw, test_raw = _split_parts(log, provided_test, config)
    # Ids are fitted on the whole training part: an item seen only in the carved validation events
    # is still in the catalogue (untrained, like a cold item), so the test set loses nothing to it.
    known = (
        train_raw
        if validation_raw is None
        else pl.concat([train_raw, validation_raw], how="vertical_relaxed")
    )
    mapping = IdMapping.fit(known, items)
    threshold = config.label_threshold
    context = fit_context(train_raw, config.features)  # request-time features, fitted on training

    def encoded(frame: pl.DataFrame) -> pl.DataFrame:
        return encode_events(frame.lazy(), mapping, threshold, context, config.features).collect()

    coverage = {"test": held_out_coverage(test_raw.lazy(), mapping, threshold)}
    if validation_raw is not None:
        coverage["validation"] = held_out_coverage(validation_raw.lazy(), mapping, threshold)
    train, test = encoded(train_raw), encoded(test_raw)
    validation = encoded(validation_raw).sort(ORDER) if validation_raw is not None else None
    if train.filter(pl.col(LABEL) > 0).height == 0:
        raise DataError(f"no positive training events (label value >= {threshold})")

    events = train.lazy()
    names = [c.name for c in context]  # examples carry their event's request context
    positives = events.filter(pl.col(LABEL) > 0).select(USER_IDX, ITEM_IDX, TIMESTAMP, *names)
    examples = hist.with_point_in_time_history(positives, events, config.history_len)
    labelled = events.select(USER_IDX, ITEM_IDX, TIMESTAMP, LABEL, *names)
    ranking_examples = hist.with_point_in_time_history(labelled, events, config.history_len)
    tables = feature_tables(
        config,
        mapping,
        users_table,
        items,
        user_aggregates(events).join(
            hist.latest_history(events, config.history_len), on=USER_IDX, how="left"
        ),
        item_aggregates(events, mapping.n_items),
        context,
    )
    return PreparedData(
        mapping=mapping,
        inputs=tables.layout,
        vocabularies=tables.vocabularies,
        # Full sort keys: joins leave row order unspecified, and seeded training must see the same rows.
        train_events=train.sort(ORDER),
        test_events=test.sort(ORDER),
        retrieval_examples=examples.sort(ORDER).collect(),
        ranking_examples=ranking_examples.sort(ORDER).collect(),
        user_features=tables.users,
        item_features=tables.items,
        history_len=config.history_len,
        validation_events=validation,
        training_history=config.training_history,
        source=config.describe(),
        coverage=coverage,
        config=config,
    )
