"""The registered model as MLflow users expect it: ``mlflow.pyfunc.load_model(uri).predict(frame)``
with raw ids in, scores out.

The ONNX graphs of a bundle take dense indices and padded id matrices; this wrapper puts the
bundle's id mapping in front of them, so a user passes the ids of their own log:

* retrieval: columns ``user_id`` and optionally ``history`` (a list of raw item ids the user
  interacted with; a model that reads histories uses it) and ``k`` (default 10). Output: one row
  per recommended item, ``user_id, rank, item_id, score`` — scored with the model's own scoring
  function, the user's ``history`` items excluded, as the server does.
* ranker: columns ``user_id``, ``item_id``, the manifest's dense features, and optionally
  ``history`` and ``genres`` (lists of genre indices). Output: ``logit`` and ``probability``.

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

from rankforge.errors import DataError
from rankforge.serving.bundle import Bundle, load_bundle
from rankforge.serving.id_lookup import IdLookup
from rankforge.serving.model_runtime import open_session, pad_rows

DEFAULT_K = 10


def _lists(frame: pd.DataFrame, column: str) -> list[np.ndarray]:
    if column not in frame:
        return [np.empty(0, dtype=np.int64)] * len(frame)
    return [np.asarray([] if v is None else v, dtype=np.int64) for v in frame[column]]


class BundleModel(mlflow.pyfunc.PythonModel):
    """A rankforge bundle behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle: Bundle = load_bundle(context.artifacts["bundle"])
        mapping = self.bundle.id_mapping
        self.users = IdLookup(mapping.users, "user_id", "user_idx")
        self.items = IdLookup(mapping.items, "item_id", "item_idx")
        graph = "user_tower.onnx" if self.bundle.manifest.kind == "retrieval" else "ranker.onnx"
        self.session = open_session(str(self.bundle.path(graph)), threads=1)
        self.inputs = [i.name for i in self.session.get_inputs()]
        if self.bundle.manifest.kind == "retrieval":
            self.item_vectors = self.bundle.item_embeddings()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "user_id" not in model_input:
            raise DataError(f"predict needs a user_id column; got {list(model_input.columns)}")
        if self.bundle.manifest.kind == "retrieval":
            return self._recommend(model_input)
        return self._score(model_input)

    def _history(self, frame: pd.DataFrame) -> np.ndarray:
        rows = [self.items.encode(ids) for ids in _lists(frame, "history")]
        return pad_rows([r[r >= 0] for r in rows], self.bundle.manifest.history_len)

    def _recommend(self, frame: pd.DataFrame) -> pd.DataFrame:
        users = self.users.encode(frame["user_id"].to_numpy()).reshape(-1, 1)
        feed = {"user_id": users, "user_history": self._history(frame)}
        queries = self.session.run(None, {k: feed[k] for k in self.inputs})[0]
        scores = queries @ self.item_vectors.T
        ks = frame["k"].to_numpy() if "k" in frame else np.full(len(frame), DEFAULT_K)
        rows = []
        for row, (user, k, seen) in enumerate(
            zip(frame["user_id"], ks, _lists(frame, "history"), strict=True)
        ):
            known = self.items.encode(seen)
            scores[row, known[known >= 0]] = -np.inf
            top = np.argsort(-scores[row], kind="stable")[: int(k)]
            ids = self.items.decode(top)
            rows += [
                (user, rank, item, float(scores[row, i]))
                for rank, (i, item) in enumerate(zip(top, ids, strict=True), 1)
            ]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])

    def _score(self, frame: pd.DataFrame) -> pd.DataFrame:
        m = self.bundle.manifest
        missing = [c for c in ("item_id", *m.dense_features) if c not in frame]
        if missing:
            raise DataError(f"predict needs column(s) {missing} for this ranker")
        items = self.items.encode(frame["item_id"].to_numpy())
        if (items < 0).any():
            unknown = frame["item_id"].to_numpy()[items < 0][:5].tolist()
            raise DataError(f"items unknown to this model: {unknown}")
        n = len(frame)
        feed = {
            "dense": frame[list(m.dense_features)].to_numpy(dtype=np.float32).reshape(n, -1),
            "user_id": self.users.encode(frame["user_id"].to_numpy()).reshape(-1, 1),
            "user_history": self._history(frame),
            "item_id": items.reshape(-1, 1),
            "item_genres": pad_rows(_lists(frame, "genres"), m.max_genres),
        }
        logits = self.session.run(None, {k: feed[k] for k in self.inputs})[0].reshape(-1)
        return pd.DataFrame({"logit": logits, "probability": 1.0 / (1.0 + np.exp(-logits))})


def signature_and_example(bundle: Bundle) -> tuple[ModelSignature, pd.DataFrame]:
    """The pyfunc signature and a one-row input example built from the bundle's own ids. Every
    column ``predict`` reads is declared (MLflow drops undeclared columns before ``predict``)."""
    mapping = bundle.id_mapping
    user = mapping.users["user_id"][0]
    item = mapping.items["item_id"][0]
    if bundle.manifest.kind == "retrieval":
        example = pd.DataFrame({"user_id": [user], "k": [5]})
        inputs = Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "k", required=False),
                ColSpec(Array(DataType.long), "history", required=False),
            ]
        )
        outputs = Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("long", "item_id"),
                ColSpec("double", "score"),
            ]
        )
    else:
        dense = list(bundle.manifest.dense_features)
        example = pd.DataFrame({"user_id": [user], "item_id": [item], **{d: [0.0] for d in dense}})
        inputs = Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "item_id"),
                *(ColSpec("double", d) for d in dense),
                ColSpec(Array(DataType.long), "history", required=False),
                ColSpec(Array(DataType.long), "genres", required=False),
            ]
        )
        outputs = Schema([ColSpec("float", "logit"), ColSpec("double", "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs), example
