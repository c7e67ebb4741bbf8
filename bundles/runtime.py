"""The two bundles as ONNX Runtime sessions plus everything the request path needs beside them.

Inputs are built with numpy exactly as ``rankforge.models.inputs`` builds them for export
(padded int64 id matrices, ``-1`` padding, the most recent tail of a history kept), and bound to
the graphs by the names in the bundle manifest. ORT sessions are thread-safe, so one runtime
serves all concurrent requests; a refresh builds a new runtime and swaps the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import onnxruntime as ort

from rankforge.bundles.ann_index import load_index
from rankforge.bundles.bundle import Bundle
from rankforge.bundles.candidate_index import CandidateIndex
from rankforge.bundles.id_lookup import IdLookup
from rankforge.errors import DataError
from rankforge.features.feature_spec import DENSE_INPUT, ITEM_ID, USER_HISTORY, USER_ID, InputLayout

PAD = -1
#: Padded id rows of one input: a ``[n, width]`` matrix, or ``n`` unpadded arrays.
Lists: TypeAlias = np.ndarray | list[np.ndarray]


def pad_row(ids: np.ndarray, max_len: int) -> np.ndarray:
    """``[max_len]``: the last ``max_len`` ids, right-padded with ``-1`` (as ``pad_lists``)."""
    ids = np.asarray(ids, dtype=np.int64)[-max_len:] if max_len > 0 else np.empty(0, np.int64)
    out = np.full(max_len, PAD, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def pad_rows(rows: list[np.ndarray], max_len: int) -> np.ndarray:
    out = np.full((len(rows), max_len), PAD, dtype=np.int64)
    if max_len <= 0:
        return out
    for i, ids in enumerate(rows):
        tail = np.asarray(ids, dtype=np.int64)[-max_len:]
        out[i, : len(tail)] = tail
    return out


def _member(values: np.ndarray, small: np.ndarray) -> np.ndarray:
    """``np.isin(values, small)``; for a short ``small`` (a user's seen items) one broadcast
    compare, several times cheaper than ``isin``'s sort at a request's sizes."""
    if len(small) <= 64:
        return (values[:, None] == small[None, :]).any(axis=1)
    return np.isin(values, small)


def open_session(path: str, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime session of a bundle's graph; a file it cannot load is a ``DataError``
    naming it (ONNX Runtime's own errors are tracebacks of its C++ status)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile...: all of onnxruntime's own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load the ONNX graph {path[-160:]}: {first[:200]}") from exc


def padded(rows: Lists, n: int, width: int) -> np.ndarray:
    """``[n, width]`` int64: a matrix of that shape as it is, else each array's tail, padded."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape == (n, width):
        return np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) != n:
        raise DataError(f"{len(rows)} id rows for {n} inputs")
    return pad_rows(list(rows), width)


def _check_inputs(
    session: ort.InferenceSession,
    manifest: list[str],
    built: list[str],
    graph: str,
    subset: bool = False,
) -> None:
    """The graph's inputs must be the manifest's and ones the bundle's input layout declares (all
    of them, or with ``subset`` some: a matrix-factorisation user tower reads ``user_id`` alone)."""
    names = [i.name for i in session.get_inputs()]
    fits = set(names) <= set(built) if subset else sorted(names) == sorted(built)
    if sorted(names) != sorted(manifest) or not fits:
        raise DataError(
            f"{graph}: graph inputs {names}, manifest inputs {manifest}; the server builds {list(built)}"
        )


@dataclass(frozen=True)
class RetrievalRuntime:
    version: str
    bundle: Bundle
    user_tower: ort.InferenceSession
    index: CandidateIndex
    users: IdLookup
    items: IdLookup
    keys: np.ndarray | None = None  # item index -> the log's string id (logs with string ids)

    def item_keys(self, item_raw: np.ndarray) -> list[str]:
        """The log's string ids of raw item ids ("" for a log with integer ids or an unknown item)."""
        if self.keys is None:
            return [""] * len(item_raw)
        idx = self.items.encode(item_raw)
        return [str(self.keys[i]) if i >= 0 else "" for i in idx]

    def user_vector(
        self, user_idx: int, history_idx: np.ndarray, lists: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """The user tower's vector ``[d]`` in the model's scoring space; ``user_idx`` -1 (unknown
        user) embeds as padding. ``lists``: the user's declared id features (absent: none)."""
        history = pad_row(history_idx, self.bundle.manifest.history_len)[None, :]
        one = {name: [np.asarray(v, dtype=np.int64)] for name, v in (lists or {}).items()}
        return self.user_vectors(np.array([user_idx]), history, one)[0]

    def retrieve(self, query: np.ndarray, exclude_raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's best ``n`` items for ``query`` [d] without the items of ``exclude_raw`` (raw
        ids, e.g. the user's seen items): (raw item ids, scores), best first; ``n`` plus the
        excluded are searched, so ``n`` remain whenever the catalogue has them."""
        idx, scores = self.retrieve_indices(query, exclude_raw, n)
        return self.items.decode(idx), scores

    def retrieve_indices(
        self, query: np.ndarray, exclude_raw: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`retrieve`, answering the items' dense indices ``[<= n]`` instead of raw ids."""
        total = min(self.index.size, n + len(exclude_raw))  # a repeated id only widens the search
        idx, scores = self.index.search(query[None, :], total)
        keep = ~_member(idx[0], self.items.encode(exclude_raw))  # unknown ids (-1) match nothing
        return idx[0][keep][:n], scores[0][keep][:n]

    def user_vectors(
        self, user_idx: np.ndarray, histories: np.ndarray, lists: dict[str, Lists] | None = None
    ) -> np.ndarray:
        """Vectors ``[n, d]`` of ``n`` users with padded history rows, fed to whichever inputs the
        tower reads (a matrix-factorisation tower reads ``user_id`` alone). Declared user lists
        missing from ``lists`` are padding."""
        n = len(user_idx)
        wanted = self.bundle.manifest.inputs["user_tower.onnx"]
        feed = {
            USER_ID: np.asarray(user_idx, dtype=np.int64).reshape(-1, 1),
            USER_HISTORY: np.ascontiguousarray(histories, dtype=np.int64),
        }
        lists = lists or {}
        for s in self.layout.declared("user"):
            feed[s.name] = padded(lists.get(s.name, [np.empty(0, np.int64)] * n), n, s.max_len)
        return self.user_tower.run(None, {k: feed[k] for k in wanted})[0]

    @property
    def layout(self) -> InputLayout:
        return self.bundle.inputs


@dataclass(frozen=True)
class RankerRuntime:
    version: str
    bundle: Bundle
    session: ort.InferenceSession
    users: IdLookup
    items: IdLookup

    @property
    def dense_features(self) -> list[str]:
        return list(self.bundle.manifest.dense_features)

    @property
    def layout(self) -> InputLayout:
        return self.bundle.inputs

    def score(
        self,
        user_idx: int,
        history_idx: np.ndarray,
        dense: np.ndarray,
        item_idx: np.ndarray,
        item_lists: dict[str, Lists],
        user_lists: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Logits ``[n]`` for one user and ``n`` candidates, one ORT call. ``item_lists``: each
        declared item feature's ids per candidate; ``user_lists``: the user's declared features."""
        n = len(item_idx)
        history = pad_row(history_idx, self.bundle.manifest.history_len)
        rows: dict[str, Lists] = {}
        for s in self.layout.declared("user"):
            row = pad_row((user_lists or {}).get(s.name, np.empty(0, np.int64)), s.max_len)
            rows[s.name] = np.broadcast_to(row, (n, s.max_len))
        return self.score_rows(
            np.full(n, user_idx),
            np.broadcast_to(history, (n, len(history))),
            dense,
            item_idx,
            item_lists,
            rows,
        )

    def score_rows(
        self,
        user_idx: np.ndarray,
        histories: np.ndarray,
        dense: np.ndarray,
        item_idx: np.ndarray,
        item_lists: dict[str, Lists],
        user_lists: dict[str, Lists] | None = None,
    ) -> np.ndarray:
        """Logits ``[n]`` of ``n`` (user, item) rows, each with its own padded history row. Every
        declared item feature must be in ``item_lists``; declared user features missing from
        ``user_lists`` are padding (a cold user)."""
        n = len(item_idx)
        m = self.bundle.manifest
        feed = {
            DENSE_INPUT: np.ascontiguousarray(dense, dtype=np.float32).reshape(n, len(m.dense_features)),
            USER_ID: np.asarray(user_idx, dtype=np.int64).reshape(n, 1),
            USER_HISTORY: np.ascontiguousarray(histories, dtype=np.int64).reshape(n, m.history_len),
            ITEM_ID: np.asarray(item_idx, dtype=np.int64).reshape(n, 1),
        }
        user_lists = user_lists or {}
        for s in self.layout.declared("user"):
            feed[s.name] = padded(user_lists.get(s.name, [np.empty(0, np.int64)] * n), n, s.max_len)
        for s in self.layout.declared("item"):
            if s.name not in item_lists:
                raise DataError(f"ranker input {s.name!r} was not given")
            feed[s.name] = padded(item_lists[s.name], n, s.max_len)
        return self.session.run(None, feed)[0].reshape(n)


def load_retrieval(bundle: Bundle, version: str, threads: int = 1) -> RetrievalRuntime:
    if bundle.manifest.kind != "retrieval":
        raise DataError(f"bundle {bundle.directory} is a {bundle.manifest.kind} bundle, expected retrieval")
    session = open_session(str(bundle.path("user_tower.onnx")), threads)
    _check_inputs(
        session,
        bundle.manifest.inputs["user_tower.onnx"],
        bundle.inputs.user_keys,
        "user_tower.onnx",
        subset=True,
    )
    mapping = bundle.id_mapping
    embeddings = bundle.item_embeddings()
    items = IdLookup.items(mapping)
    if embeddings.shape[0] != len(items):
        raise DataError(f"{embeddings.shape[0]} item embeddings but {len(items)} items in the id mapping")
    return RetrievalRuntime(
        version=version,
        bundle=bundle,
        user_tower=session,
        index=load_index(bundle.directory, embeddings, bundle.manifest.index),
        users=IdLookup.users(mapping),
        items=items,
        keys=mapping.items.sort("item_idx")["item_key"].to_numpy()
        if "item_key" in mapping.items.columns
        else None,
    )


def load_ranker(bundle: Bundle, version: str, threads: int = 1) -> RankerRuntime:
    if bundle.manifest.kind != "ranker":
        raise DataError(f"bundle {bundle.directory} is a {bundle.manifest.kind} bundle, expected ranker")
    session = open_session(str(bundle.path("ranker.onnx")), threads)
    built = [DENSE_INPUT, *bundle.inputs.user_keys, *bundle.inputs.item_keys]
    _check_inputs(session, bundle.manifest.inputs["ranker.onnx"], built, "ranker.onnx")
    mapping = bundle.id_mapping
    return RankerRuntime(
        version=version,
        bundle=bundle,
        session=session,
        users=IdLookup.users(mapping),
        items=IdLookup.items(mapping),
    )
