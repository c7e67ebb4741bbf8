"""Score held-out data with served model bundles (ONNX Runtime), in each bundle's own id space.

What is evaluated is exactly what would be served: the exported graphs and item embeddings, not
the torch model they came from. Champion and challenger may have been trained on different
snapshots, so every raw id is encoded with the bundle's own mapping: a user the bundle never saw
is scored as a cold-start user (padding id), and a held-out item it never saw cannot be retrieved
and is dropped from its relevant set (and counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from rankforge.bundles.bundle import Bundle
from rankforge.bundles.id_lookup import IdLookup
from rankforge.bundles.runtime import load_ranker, load_retrieval
from rankforge.errors import DataError
from rankforge.evaluation.metrics import sigmoid
from rankforge.features.auctions import AuctionTensors
from rankforge.features.feature_spec import Side
from rankforge.features.pipeline import PreparedData, ranking_frame
from rankforge.features.sequences import padded_id_lists


@dataclass(frozen=True)
class BundleIds:
    """A bundle's raw-id lookups."""

    users: IdLookup
    items: IdLookup

    @classmethod
    def of(cls, bundle: Bundle) -> BundleIds:
        mapping = bundle.id_mapping
        return cls(IdLookup.users(mapping), IdLookup.items(mapping))

    def encode_lists(self, lists: pl.Series, max_len: int) -> np.ndarray:
        """Raw item-id lists -> padded bundle indices; unknown items become padding (-1)."""
        return self.items.encode(padded_id_lists(lists, max_len))


@dataclass(frozen=True)
class RetrievalScores:
    users: np.ndarray  # raw user ids, one row each
    scores: Callable[[torch.Tensor], torch.Tensor]  # user rows -> their [rows, bundle items] scores
    relevant: sp.csr_matrix  # bool [users, bundle items], held-out positives the bundle knows
    exclude: sp.csr_matrix  # bool, the users' known (training) items
    cold_users: int  # evaluated users the bundle has no embedding for
    dropped_items: int  # held-out positives whose item the bundle does not know

    def evaluable(self) -> np.ndarray:
        """Raw ids of the users with at least one relevant item."""
        return self.users[np.diff(self.relevant.indptr) > 0]


def require_features(bundle: Bundle, data: PreparedData) -> None:
    """``data`` holds every feature the bundle reads, declared feature ids meaning the same values
    (equal vocabulary digests); else a one-line ``DataError`` naming the first that does not."""
    # a retrieval bundle's item side is its precomputed item matrix: only user features are read
    sides: tuple[Side, ...] = ("user",) if bundle.manifest.kind == "retrieval" else ("user", "item")
    unmatched = bundle.unmatched_feature(data.vocabulary_digests(), sides)
    if unmatched is not None and unmatched[1] == "missing":
        raise DataError(
            f"bundle {str(bundle.directory)[-80:]} reads declared feature {unmatched[0]!r}, which the "
            "evaluation data does not declare: give its training config's [data] (--data-config)"
        )
    if unmatched is not None:
        raise DataError(
            f"feature {unmatched[0]!r} has another vocabulary in the evaluation data than in the bundle"
        )
    missing = [n for n in bundle.manifest.dense_features if n not in data.inputs.dense_features]
    if missing:
        raise DataError(f"the evaluation data lacks the bundle's dense feature(s) {missing}")


def user_vectors(bundle: Bundle, ids: BundleIds, users: np.ndarray, data: PreparedData) -> np.ndarray:
    """User-tower vectors ``[n, d]`` for raw user ids, from their raw-id histories and declared
    features in ``data``, in the model's scoring space (so ``vectors @ bundle.item_embeddings().T``
    are its scores)."""
    require_features(bundle, data)
    keep = {"on": "user_id", "how": "left", "maintain_order": "left"}
    frame = pl.DataFrame({"user_id": users}, schema={"user_id": pl.Int64}).join(data.raw_histories, **keep)
    declared = bundle.inputs.declared("user")
    lists = {}
    if declared:
        rows = frame.join(data.mapping.users, **keep).join(
            data.user_features.select("user_idx", *(s.name for s in declared)),
            on="user_idx",
            how="left",
            maintain_order="left",
        )
        lists = {s.name: padded_id_lists(rows[s.name], s.max_len) for s in declared}
    runtime = load_retrieval(bundle, "evaluation", threads=0)  # the server's own user tower feed
    return runtime.user_vectors(
        ids.users.encode(users), ids.encode_lists(frame["history"], bundle.manifest.history_len), lists
    )


def score_retrieval(bundle: Bundle, data: PreparedData) -> RetrievalScores:
    """Every held-out user's scores over all of the bundle's items, computed per user chunk when
    read (users x dim in memory, never users x items), with sparse relevant/known masks."""
    ids = BundleIds.of(bundle)
    test = data.test_positives()
    users = np.unique(test["user_id"].to_numpy())
    vectors = torch.from_numpy(user_vectors(bundle, ids, users, data))
    items = torch.from_numpy(bundle.item_embeddings())
    shape = (len(users), len(ids.items))

    def mask(events: pl.DataFrame) -> tuple[sp.csr_matrix, int]:
        rows = np.searchsorted(users, events["user_id"].to_numpy())
        inside = (rows < len(users)) & (
            users[np.minimum(rows, len(users) - 1)] == events["user_id"].to_numpy()
        )
        encoded = ids.items.encode(events["item_id"].to_numpy())
        keep = inside & (encoded >= 0)
        matrix = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=bool), (rows[keep], encoded[keep])), shape=shape
        )
        return matrix, int((inside & (encoded < 0)).sum())

    relevant, dropped = mask(test)
    exclude, _ = mask(data.known_events())
    relevant = (relevant.astype(np.int8) - relevant.multiply(exclude).astype(np.int8)).astype(bool)
    relevant.eliminate_zeros()
    return RetrievalScores(
        users=users,
        scores=lambda rows: vectors[rows] @ items.T,
        relevant=relevant.tocsr(),
        exclude=exclude,
        cold_users=int((ids.users.encode(users) < 0).sum()),
        dropped_items=dropped,
    )


def popularity_scores(scored: RetrievalScores, bundle: Bundle, data: PreparedData) -> RetrievalScores:
    """The most-popular-unseen-items floor over the same users, relevant and known items as
    ``scored`` (a ``bundle``'s scores): each of the bundle's items scored by its training events in
    ``data``, the same for every user, so masking the known items leaves the most popular unseen
    ones (the floor ``rankforge train`` reports, here in the bundle's item space)."""
    ids = BundleIds.of(bundle)
    counts = data.train_events.group_by("item_id").len("events")
    encoded = ids.items.encode(counts["item_id"].to_numpy())
    known = encoded >= 0
    popularity = torch.zeros(len(ids.items), dtype=torch.float32)
    popularity[torch.from_numpy(encoded[known])] = torch.from_numpy(
        counts["events"].to_numpy()[known].astype(np.float32)
    )
    return replace(scored, scores=lambda rows: popularity.expand(len(rows), -1))


def item_rate_probabilities(data: PreparedData, events: pl.DataFrame) -> np.ndarray:
    """The item-rate floor of a CTR model: each event's item's smoothed positive rate in ``data``'s
    training part (the rate a model that knows nothing of the user would predict)."""
    rates = data.item_features["item_pos_rate"].to_numpy().astype(np.float64)  # indexed by item_idx
    return rates[events["item_idx"].to_numpy()]


def ranker_logits(bundle: Bundle, frame: pl.DataFrame, histories: pl.DataFrame) -> np.ndarray:
    """Logits for rows with raw ``user_id``/``item_id``, the dense columns and a column per
    declared id feature, scored through the server's ranker runtime (one feed builder for serving
    and evaluation).

    Declared features' indices are taken as they are: a bundle whose vocabularies differ from the
    data's (``vocabulary_digests``) is refused by the caller.
    """
    ids = BundleIds.of(bundle)
    m = bundle.manifest
    with_history = frame.select("user_id").join(histories, on="user_id", how="left", maintain_order="left")
    return load_ranker(bundle, "evaluation", threads=0).score_rows(
        ids.users.encode(frame["user_id"].to_numpy()),
        ids.encode_lists(with_history["history"], m.history_len),
        frame.select(pl.col(m.dense_features).cast(pl.Float32).fill_null(0.0)).to_numpy(),
        ids.items.encode(frame["item_id"].to_numpy()),
        {s.name: padded_id_lists(frame[s.name], s.max_len) for s in bundle.inputs.declared("item")},
        {s.name: padded_id_lists(frame[s.name], s.max_len) for s in bundle.inputs.declared("user")},
    )


def ranker_coverage(bundle: Bundle, events: pl.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
    """Which held-out events (raw ``user_id``/``item_id``) a ranker can score, and counts of the rest.

    Mirrors retrieval: a user the bundle never saw is scored as a cold start (padding id, as the
    server does) and counted; an item it never saw has no embedding, so its events are dropped.
    """
    ids = BundleIds.of(bundle)
    known_item = ids.items.encode(events["item_id"].to_numpy()) >= 0
    cold = ids.users.encode(events["user_id"].to_numpy()) < 0
    return known_item, {"cold_user_events": int(cold.sum()), "dropped_item_events": int((~known_item).sum())}


def ranker_probabilities(bundle: Bundle, pairs: pl.DataFrame, data: PreparedData) -> np.ndarray:
    """P(positive) for (user_idx, item_idx) rows of ``data`` (features as served); a ranker with
    request-context features reads them from the rows' own columns (held-out events carry them,
    normalised as in training)."""
    require_features(bundle, data)
    context = bundle.inputs.context_names
    missing = [c for c in context if c not in pairs.columns]
    if missing:
        raise DataError(
            f"the ranker reads request context {missing}, which these rows do not carry "
            "(replay slates and auctions have no request context)"
        )
    frame = ranking_frame(pairs.select("user_idx", "item_idx", *context), data).join(
        data.mapping.users, on="user_idx", how="left", maintain_order="left"
    )
    return sigmoid(ranker_logits(bundle, frame, data.raw_histories))


def served_auction_pctr(bundle: Bundle, auctions: AuctionTensors, data: PreparedData) -> np.ndarray:
    """A ranker bundle's P(click) of every ``[A, M]`` auction slot, scored as served (padding slots
    hold a real ad's score: mask them)."""
    return ranker_probabilities(bundle, auctions.slots(), data).reshape(tuple(auctions.ads.shape))


def slate_scores(bundle: Bundle, log: pl.DataFrame, data: PreparedData) -> np.ndarray:
    """The bundle's score of every slate item ``[events, slate_size]`` (replay logs).

    Retrieval bundles score by inner product (items they do not know score -inf: they could never
    be retrieved); rankers score P(positive) with the features of ``data``.
    """
    slates = np.stack(log["slate"].to_numpy())
    if bundle.manifest.kind == "retrieval":
        ids = BundleIds.of(bundle)
        users = log["user_id"].to_numpy()
        vectors = user_vectors(bundle, ids, users, data)
        items = ids.items.encode(slates)
        embeddings = bundle.item_embeddings()
        scores = np.einsum("nd,nsd->ns", vectors, embeddings[np.maximum(items, 0)])
        return np.where(items >= 0, scores, -np.inf)
    data_users = IdLookup.users(data.mapping).encode(log["user_id"].to_numpy())
    data_items = IdLookup.items(data.mapping).encode(slates)
    if (data_users < 0).any() or (data_items < 0).any():
        raise ValueError("the replay log names users or items unknown to the evaluation data")
    pairs = pl.DataFrame(
        {"user_idx": np.repeat(data_users, slates.shape[1]), "item_idx": data_items.reshape(-1)}
    )
    return ranker_probabilities(bundle, pairs, data).reshape(slates.shape)
