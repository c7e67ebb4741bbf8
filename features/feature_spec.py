"""The feature spec: which features a job's models read, declared once in the data config.

Built in, for every log: ``user_id`` and ``item_id`` (one embedding table each), ``user_history``
(the user's last ``history_len`` positive items, point-in-time in training, latest when served)
and the four dense aggregates of :mod:`rankforge.features.aggregates`. Everything else is
declared under ``[[data.features]]``::

    [data.item_table]            # side tables: attributes keyed by the log's raw ids
    path = "items.csv"
    key = "video"

    [[data.features]]
    name = "item_genres"         # the model input's name
    side = "item"                # "user" | "item" (from data.user_table / data.item_table)
    kind = "multi_categorical"   # "categorical" | "multi_categorical" | "numeric"
    column = "genres"            # the side table's column (default: name)
    separator = "|"              # a string column holding several values
    max_len = 8                  # values kept per row (the padded input width)
    pooling = "mean"             # how the embedding bag pools them
    max_vocabulary = 1000        # table size: the most frequent values; rarer ones embed as nothing

A declaration is all it takes: the pipeline builds the column (vocabulary indices or normalised
numbers, see :func:`rankforge.features.pipeline.prepare`), and the :class:`InputLayout` derived
from it is what the models' embedding tables, the ONNX input names, the bundle manifest, the Redis
records written by ``materialize``, the server's input feed and the MLflow signature are built
from. The built-in sources (synthetic, MovieLens) supply their item catalogue as the item table,
so ``genres`` is a declared feature of their configs, not code.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rankforge.features.aggregates import ITEM_DENSE, USER_DENSE

USER_ID = "user_id"
ITEM_ID = "item_id"
USER_HISTORY = "user_history"
#: The ranker graph's dense input: the user, item and context blocks of ``dense_features``.
DENSE_INPUT = "dense"
#: Names a declared feature cannot take: the built-in inputs and the ranker's dense input.
RESERVED = frozenset({USER_ID, ITEM_ID, USER_HISTORY, DENSE_INPUT, "history", *USER_DENSE, *ITEM_DENSE})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

Side = Literal["user", "item"]


class SideTable(BaseModel):
    """A CSV/parquet/NDJSON file of user or item attributes, one row per raw id."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    key: str  # the column holding the raw user or item id


class Feature(BaseModel):
    """One declared feature (see the module docstring for the TOML form)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    # "context": a request-time number, from the log's column in training and from the Rank
    # RPC's context map (by this name, raw) when served
    side: Literal["user", "item", "context"]
    # "sequence" (side "user"): the point-in-time history of an item feature -- the values of
    # the declared categorical item feature named by ``column`` over the user's history items
    kind: Literal["categorical", "multi_categorical", "numeric", "sequence"]
    column: str | None = None  # the side table's column; default: the feature's name
    separator: str | None = None  # multi_categorical from a delimited string ("Action|Comedy")
    max_len: int = Field(8, ge=1, le=1024)  # multi_categorical: values kept per row
    pooling: Literal["mean", "sum"] = "mean"
    max_vocabulary: int | None = Field(None, ge=1)
    normalization: Literal["none", "log1p", "standard"] = "standard"  # numeric only
    # context: the valid range of raw values; a training row or a request outside it is refused
    min: float | None = None
    max: float | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"feature name {value!r}: use lower-case letters, digits and '_' (max 48)")
        if value in RESERVED:
            raise ValueError(f"feature name {value!r} is built in; choose another name")
        return value

    @model_validator(mode="after")
    def _fits(self) -> Feature:
        if self.separator is not None and self.kind != "multi_categorical":
            raise ValueError(f"feature {self.name!r}: separator only applies to kind 'multi_categorical'")
        if self.separator == "":
            raise ValueError(f"feature {self.name!r}: separator must not be empty")
        if self.side == "context" and self.kind != "numeric":
            raise ValueError(f"feature {self.name!r}: context features are numeric (got kind {self.kind!r})")
        if (self.min is not None or self.max is not None) and self.side != "context":
            raise ValueError(f"feature {self.name!r}: min/max declare the valid range of a context feature")
        bounds = [b for b in (self.min, self.max) if b is not None]
        if not all(math.isfinite(b) for b in bounds) or (len(bounds) == 2 and not bounds[0] < bounds[1]):
            raise ValueError(f"feature {self.name!r}: min and max must be finite with min < max")
        if self.kind == "sequence" and (self.side != "user" or self.column is None):
            raise ValueError(
                f"feature {self.name!r}: a sequence is a user feature whose column names a categorical "
                "item feature"
            )
        return self

    @property
    def source_column(self) -> str:
        return self.column or self.name

    @property
    def width(self) -> int:
        """Values per row in the padded input: 1 for a single categorical."""
        return self.max_len if self.kind == "multi_categorical" else 1

    @property
    def is_sparse(self) -> bool:
        return self.kind != "numeric"

    @property
    def vocabulary(self) -> str:
        """Whose vocabulary this feature's ids index: its own, or (a sequence) its item feature's."""
        return self.source_column if self.kind == "sequence" else self.name


def check_unique(features: list[Feature]) -> None:
    """Two declarations with one name would silently share (or shadow) a column; a sequence must
    name a declared single-valued categorical item feature."""
    seen: set[str] = set()
    for f in features:
        if f.name in seen:
            raise ValueError(f"feature {f.name!r} is declared twice")
        seen.add(f.name)
    items = {f.name: f for f in features if f.side == "item"}
    for f in features:
        if f.kind == "sequence" and (f.column not in items or items[f.column].kind != "categorical"):
            raise ValueError(
                f"feature {f.name!r}: sequence column {f.column!r} must name a declared categorical item "
                f"feature (declared: {sorted(items)})"
            )


@dataclass(frozen=True)
class SparseInput:
    """One id input of the models: its padded width, table size and pooling."""

    name: str
    side: Side
    max_len: int
    num_embeddings: int
    pooling: Literal["mean", "sum"] = "mean"
    sequence_of: str = ""  # a sequence: the item feature whose values over the history it holds


@dataclass(frozen=True)
class ContextInput:
    """A request-time dense input and the normalisation fitted on the training events: the
    served value is ``(transform(raw) - shift) / scale``, as the training column was built."""

    name: str
    transform: str = "none"  # "none" | "log1p"
    shift: float = 0.0
    scale: float = 1.0
    minimum: float | None = None  # the declared valid range of raw values (None: unbounded)
    maximum: float | None = None

    def out_of_range(self, raw: float) -> str | None:
        """Why a raw value is not a valid value of this input, or None."""
        if self.transform == "log1p" and raw < 0:
            return "must be >= 0"
        if self.minimum is not None and raw < self.minimum:
            return f"must be >= {self.minimum:g}"
        if self.maximum is not None and raw > self.maximum:
            return f"must be <= {self.maximum:g}"
        return None

    def normalise(self, raw: float) -> float:
        """One served value (the server and the pyfunc model)."""
        value = math.log1p(raw) if self.transform == "log1p" else raw
        return (value - self.shift) / self.scale

    def expr(self, column: str) -> pl.Expr:
        """The same transform over a log column (training and held-out events), float32."""
        raw = pl.col(column).cast(pl.Float64)
        value = raw.log1p() if self.transform == "log1p" else raw
        return ((value - self.shift) / self.scale).cast(pl.Float32).alias(self.name)


@dataclass(frozen=True)
class InputLayout:
    """Every model input of one prepared data set, in the order models and graphs take them.

    Derived from the spec plus the data (vocabulary sizes), carried in every bundle manifest, and
    read by the server, so training, export and serving agree on names, widths and order.
    """

    sparse: tuple[SparseInput, ...]
    user_dense: tuple[str, ...]
    item_dense: tuple[str, ...]
    context: tuple[ContextInput, ...] = ()

    @property
    def user_keys(self) -> list[str]:
        return [s.name for s in self.sparse if s.side == "user"]

    @property
    def item_keys(self) -> list[str]:
        return [s.name for s in self.sparse if s.side == "item"]

    @property
    def context_names(self) -> list[str]:
        return [c.name for c in self.context]

    @property
    def dense_features(self) -> list[str]:
        """The ranker's dense input: user block, item block, then the request context."""
        return [*self.user_dense, *self.item_dense, *self.context_names]

    def input(self, name: str) -> SparseInput:
        for s in self.sparse:
            if s.name == name:
                return s
        raise KeyError(name)

    def declared(self, side: Side) -> list[SparseInput]:
        """The declared (not built-in) sparse inputs of one side: the id lists a feature record
        carries after the built-in history."""
        return [s for s in self.sparse if s.side == side and s.name not in (USER_ID, ITEM_ID, USER_HISTORY)]

    def to_dict(self) -> dict:
        return {
            "sparse": [asdict(s) for s in self.sparse],
            "user_dense": list(self.user_dense),
            "item_dense": list(self.item_dense),
            "context": [asdict(c) for c in self.context],
        }

    @classmethod
    def from_dict(cls, raw: dict) -> InputLayout:
        return cls(
            sparse=tuple(SparseInput(**s) for s in raw["sparse"]),
            user_dense=tuple(raw["user_dense"]),
            item_dense=tuple(raw["item_dense"]),
            context=tuple(ContextInput(**c) for c in raw.get("context", [])),
        )


def input_layout(
    features: list[Feature],
    n_users: int,
    n_items: int,
    history_len: int,
    vocabulary_sizes: dict[str, int],
    context: tuple[ContextInput, ...] = (),
) -> InputLayout:
    """The built-in inputs plus the declared ones, user side first."""
    sparse = [
        SparseInput(USER_ID, "user", 1, n_users, "sum"),
        SparseInput(USER_HISTORY, "user", history_len, n_items, "mean"),
    ]
    sides: tuple[Side, ...] = ("user", "item")
    for side in sides:
        if side == "item":
            sparse.append(SparseInput(ITEM_ID, "item", 1, n_items, "sum"))
        sparse += [
            SparseInput(
                f.name,
                side,
                history_len if f.kind == "sequence" else f.width,
                max(vocabulary_sizes[f.vocabulary], 1),
                f.pooling,
                f.column or "" if f.kind == "sequence" else "",
            )
            for f in features
            if f.side == side and f.is_sparse
        ]
    numeric = {
        side: tuple(f.name for f in features if f.side == side and not f.is_sparse)
        for side in ("user", "item")
    }
    return InputLayout(
        sparse=tuple(sparse),
        user_dense=(*USER_DENSE, *numeric["user"]),
        item_dense=(*ITEM_DENSE, *numeric["item"]),
        context=context,
    )
