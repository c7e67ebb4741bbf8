"""The registered model as MLflow users expect it: ``mlflow.pyfunc.load_model(uri).predict(frame)``
with raw ids in, scores out.

The ONNX graphs of a bundle take dense indices and padded id matrices; this wrapper puts the
bundle's id mapping in front of them, so a user passes the ids of their own log:

* retrieval: columns ``user_id`` and optionally ``history`` (a list of raw item ids the user
  interacted with; a model that reads histories uses it) and ``k`` (default 10). Output: one row
  per recommended item, ``user_id, rank, item_id, score`` — scored with the model's own scoring
  function, the user's ``history`` items excluded, as the server does.
* ranker: columns ``user_id``, ``item_id``, the manifest's dense features (request-context
  features as raw values, normalised here as the server does), and optionally
  ``history`` and one column per declared id feature of the bundle's feature spec (lists of
  vocabulary indices, e.g. ``item_genres``). Output: ``logit`` and ``probability``.

Unknown users embed as cold starts (padding), as when serving; unknown items in a ranker frame are
an error naming them. ONNX Runtime runs on the CPU execution provider only.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from rankforge.bundles.bundle import Bundle, load_bundle
from rankforge.bundles.runtime import (
    RankerRuntime,
    RetrievalRuntime,
    load_ranker,
    load_retrieval,
    pad_rows,
)
from rankforge.errors import DataError
from rankforge.features.feature_spec import Side
from rankforge.features.string_ids import stable_id

DEFAULT_K = 10


def _raw(values: Any) -> np.ndarray:
    """Raw int64 ids; string ids (a log with ``data.log.ids = "string"``) by their stable id."""
    values = list(values)
    if any(isinstance(v, str) for v in values):
        return np.array([stable_id(str(v)) for v in values], dtype=np.int64)
    return np.asarray(values, dtype=np.int64)


def _lists(frame: pd.DataFrame, column: str, raw: bool = False) -> list[np.ndarray]:
    """One id array per row (``raw``: raw item ids, string ids converted)."""
    if column not in frame:
        return [np.empty(0, dtype=np.int64)] * len(frame)
    if raw:
        return [_raw([] if v is None else v) for v in frame[column]]
    return [np.asarray([] if v is None else v, dtype=np.int64) for v in frame[column]]


class BundleModel(mlflow.pyfunc.PythonModel):
    """A rankforge bundle behind MLflow's pyfunc interface (see the module docstring). It runs the
    server's own runtimes (``serving.model_runtime``): the same user tower, index and ranker feed."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        bundle = load_bundle(context.artifacts["bundle"])
        self.kind = bundle.manifest.kind
        self.runtime: RetrievalRuntime | RankerRuntime = (
            load_retrieval(bundle, "pyfunc") if self.kind == "retrieval" else load_ranker(bundle, "pyfunc")
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "user_id" not in model_input:
            raise DataError(f"predict needs a user_id column; got {list(model_input.columns)}")
        if isinstance(self.runtime, RetrievalRuntime):
            return self._recommend(self.runtime, model_input)
        return self._score(self.runtime, model_input)

    @staticmethod
    def _recommend(runtime: RetrievalRuntime, frame: pd.DataFrame) -> pd.DataFrame:
        """Top k per row, as the server retrieves: the index's best without the user's seen items
        (the ``seen`` column when given, as the feature store holds them; else the history)."""
        users = runtime.users.encode(_raw(frame["user_id"]))
        ks = frame["k"].to_numpy() if "k" in frame else np.full(len(frame), DEFAULT_K)
        names = [s.name for s in runtime.layout.declared("user")]
        columns = {name: _lists(frame, name) for name in names}
        histories = _lists(frame, "history", raw=True)
        excluded = _lists(frame, "seen", raw=True) if "seen" in frame else histories
        rows = []
        for row, (user, user_idx, k, raw_history, seen) in enumerate(
            zip(frame["user_id"], users, ks, histories, excluded, strict=True)
        ):
            history = runtime.items.encode(raw_history)
            query = runtime.user_vector(
                int(user_idx), history[history >= 0], {n: columns[n][row] for n in names}
            )
            items, scores = runtime.retrieve(query, seen, int(k))  # as the server retrieves
            keys = runtime.item_keys(items[: int(k)])
            for rank, (item, score, key) in enumerate(
                zip(items[: int(k)], scores[: int(k)], keys, strict=True), 1
            ):
                rows.append((user, rank, item, float(score), key))
        out = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "item_key"])
        return out if runtime.keys is not None else out.drop(columns="item_key")

    @staticmethod
    def _score(runtime: RankerRuntime, frame: pd.DataFrame) -> pd.DataFrame:
        dense = runtime.dense_features
        missing = [c for c in ("item_id", *dense) if c not in frame]
        if missing:
            raise DataError(f"predict needs column(s) {missing} for this ranker")
        items = runtime.items.encode(_raw(frame["item_id"]))
        if (items < 0).any():
            unknown = frame["item_id"].to_numpy()[items < 0][:5].tolist()
            raise DataError(f"items unknown to this model: {unknown}")
        histories = [runtime.items.encode(ids) for ids in _lists(frame, "history", raw=True)]
        values = frame[dense].to_numpy(dtype=np.float64)
        for c in runtime.layout.context:  # request context comes raw, as to the server
            column = dense.index(c.name)
            values[:, column] = [c.normalise(v) for v in values[:, column]]
        logits = runtime.score_rows(
            runtime.users.encode(_raw(frame["user_id"])),
            pad_rows([h[h >= 0] for h in histories], runtime.bundle.manifest.history_len),
            values.astype(np.float32),
            items,
            {s.name: _lists(frame, s.name) for s in runtime.layout.declared("item")},
            {s.name: _lists(frame, s.name) for s in runtime.layout.declared("user")},
        )
        return pd.DataFrame({"logit": logits, "probability": 1.0 / (1.0 + np.exp(-logits))})


def signature_and_example(bundle: Bundle) -> tuple[ModelSignature, pd.DataFrame]:
    """The pyfunc signature and a one-row input example built from the bundle's own ids. Every
    column ``predict`` reads is declared (MLflow drops undeclared columns before ``predict``)."""
    mapping = bundle.id_mapping
    keyed = "item_key" in mapping.items.columns  # a log with string ids: predict takes the strings
    ids = "string" if keyed else "long"
    user = mapping.users["user_key" if keyed else "user_id"][0]
    item = mapping.items["item_key" if keyed else "item_id"][0]
    layout = bundle.inputs
    sides: tuple[Side, ...] = ("user",) if bundle.manifest.kind == "retrieval" else ("user", "item")
    # the declared id features of the bundle's feature spec, as lists of vocabulary indices
    declared = [
        ColSpec(Array(DataType.long), s.name, required=False) for side in sides for s in layout.declared(side)
    ]
    if bundle.manifest.kind == "retrieval":
        example = pd.DataFrame({"user_id": [user], "k": [5]})
        inputs = Schema(
            [
                ColSpec(ids, "user_id"),
                ColSpec("long", "k", required=False),
                ColSpec(Array(DataType[ids]), "history", required=False),
                *declared,
            ]
        )
        outputs = Schema(
            [
                ColSpec(ids, "user_id"),
                ColSpec("long", "rank"),
                ColSpec("long", "item_id"),
                ColSpec("double", "score"),
                *([ColSpec("string", "item_key")] if keyed else []),
            ]
        )
    else:
        dense = list(bundle.manifest.dense_features)
        example = pd.DataFrame({"user_id": [user], "item_id": [item], **{d: [0.0] for d in dense}})
        inputs = Schema(
            [
                ColSpec(ids, "user_id"),
                ColSpec(ids, "item_id"),
                *(ColSpec("double", d) for d in dense),
                ColSpec(Array(DataType[ids]), "history", required=False),
                *declared,
            ]
        )
        outputs = Schema([ColSpec("float", "logit"), ColSpec("double", "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs), example
