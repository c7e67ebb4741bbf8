"""Training batches from the feature pipeline, with negatives sampled per batch in tensors.

Every user and item feature is padded once into a tensor indexed by ``user_idx`` / ``item_idx``
(:class:`FeatureTables`); a batch is then pure indexing, so sampled negatives never exist as rows
of a table and the whole epoch's negatives are never in memory at once.

Each batch is first drawn *globally* (same generator, same draws on every rank), then every rank
keeps its own contiguous slice. The random stream therefore does not depend on the number of
processes, the ranks need no communication to agree on a batch, and the generator state saved in a
checkpoint is all it takes to continue the exact same stream after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from torchrec import KeyedJaggedTensor

from rankforge.errors import DataError
from rankforge.features.feature_spec import ITEM_ID, USER_HISTORY, USER_ID, InputLayout
from rankforge.features.history import N_BEFORE
from rankforge.features.pipeline import PreparedData
from rankforge.features.schema import ITEM_IDX, LABEL, USER_IDX
from rankforge.models.inputs import PAD, dense_inputs, pad_lists, padded_to_kjt, side_inputs
from rankforge.training.reference import Reference
from rankforge.training.sampled_scores import SampledPattern

#: Polars does not promise a row order after joins and group-bys; shuffling a canonical order
#: is what makes a seed reproduce a run.
CANONICAL_ORDER = ["user_idx", "timestamp", "item_idx"]


@dataclass(frozen=True)
class FeatureTables:
    """Padded per-user and per-item features; row ``i`` belongs to index ``i``. Which lists and
    dense columns there are is the data's :class:`InputLayout` (the feature spec)."""

    layout: InputLayout
    user_lists: dict[str, torch.Tensor]  # user_history (latest, as served) + declared user lists
    user_dense: torch.Tensor  # [U, len(layout.user_dense)]
    item_lists: dict[str, torch.Tensor]  # declared item lists [I, width], -1 padded
    item_dense: torch.Tensor  # [I, len(layout.item_dense)]
    item_events: torch.Tensor  # [I] train events per item (popularity)
    item_pos_rate: torch.Tensor  # [I] smoothed positive rate: the reference CTR model

    @classmethod
    def build(cls, data: PreparedData) -> FeatureTables:
        users, items = data.user_features, data.item_features
        for frame, column, n in ((users, "user_idx", data.n_users), (items, "item_idx", data.n_items)):
            if frame.height != n or not frame[column].equals(pl.Series(column, range(n), dtype=pl.Int64)):
                raise DataError(f"feature table {column} must hold every index 0..{n - 1} in order")
        layout = data.inputs
        user_lists = side_inputs(users, layout, "user")
        item_lists = side_inputs(items, layout, "item")
        del user_lists[USER_ID], item_lists[ITEM_ID]  # the index itself
        return cls(
            layout=layout,
            user_lists=user_lists,
            user_dense=dense_inputs(users, layout.user_dense),
            item_lists=item_lists,
            item_dense=dense_inputs(items, layout.item_dense),
            item_events=torch.from_numpy(items["item_events"].cast(pl.Float64).to_numpy().copy()),
            item_pos_rate=dense_inputs(items, ["item_pos_rate"]).squeeze(1),
        )

    @property
    def n_items(self) -> int:
        return self.item_dense.shape[0]

    @property
    def user_history(self) -> torch.Tensor:
        """``[U, history_len]``: each user's latest history, as served."""
        return self.user_lists[USER_HISTORY]

    @property
    def user_keys(self) -> list[str]:
        return self.layout.user_keys

    @property
    def item_keys(self) -> list[str]:
        return self.layout.item_keys

    def items(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = idx.reshape(-1)
        return {ITEM_ID: flat.reshape(-1, 1), **{k: v[flat] for k, v in self.item_lists.items()}}

    def users(self, idx: torch.Tensor, history: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``history`` overrides the latest one (point-in-time histories of training examples), and
        with it every declared sequence (its item feature's values over that history)."""
        out = {USER_ID: idx.reshape(-1, 1), **{k: v[idx] for k, v in self.user_lists.items()}}
        if history is not None:
            out[USER_HISTORY] = history
            out |= self.sequences(history)
        return out

    def sequences(self, history: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each declared sequence over padded item-index ``history`` rows (``-1`` stays padding,
        as do items without a value)."""
        out = {}
        for s in self.layout.sparse:
            if s.sequence_of:
                value = self.item_lists[s.sequence_of][:, 0]  # a categorical item feature: one value
                rows = torch.where(history >= 0, value[history.clamp(min=0)], PAD)
                # left-aligned like the served (latest) list: values in history order, then padding
                order = torch.argsort((rows < 0).to(torch.int8), dim=1, stable=True)
                out[s.name] = rows.gather(1, order)
        return out

    def dense(
        self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Dense ranking features in ``layout.dense_features`` order: user block, item block, then
        the rows' request context ``[n, len(layout.context)]`` (required when the layout has any)."""
        if context is None:
            if self.layout.context:
                raise DataError(f"these rows carry no request context for {self.layout.context_names}")
            context = torch.empty(len(users), 0)
        return torch.cat([self.user_dense[users], self.item_dense[items], context], dim=1)


def context_tensor(frame: pl.DataFrame, layout: InputLayout) -> torch.Tensor:
    """``[n, len(layout.context)]`` float32: the rows' normalised request context columns."""
    return dense_inputs(frame, layout.context_names) if layout.context else torch.empty(frame.height, 0)


class NegativeSampler:
    """Item indices drawn uniformly or by popularity, ``(events + 1) ** power``.

    ``uniform_share`` mixes the two pools in every row of negatives (mixed negative sampling,
    Yang et al., WWW 2020): the last ``round(share * n)`` of each row are uniform over the
    catalogue (easy negatives, what a first stage must reject), the rest follow ``distribution``
    (popular, harder negatives, what survives into a later stage).
    """

    def __init__(
        self,
        item_events: torch.Tensor,
        distribution: Literal["uniform", "popularity"],
        popularity_power: float = 0.75,
        uniform_share: float = 0.0,
    ) -> None:
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"distribution must be 'uniform' or 'popularity', got {distribution!r}")
        if not 0.0 <= uniform_share <= 1.0:
            raise ValueError(f"uniform_share must lie in [0, 1], got {uniform_share!r}")
        self.n_items = int(item_events.numel())
        self.distribution = distribution
        self.weights = (item_events.double() + 1.0).pow(popularity_power)
        self.uniform_share = float(uniform_share)

    def _draw(self, n: int, uniform: bool, generator: torch.Generator) -> torch.Tensor:
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        if uniform:
            return torch.randint(self.n_items, (n,), generator=generator)
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        last = shape[-1] if shape else 1
        n_uniform = round(self.uniform_share * last) if self.distribution != "uniform" else last
        if n_uniform in (0, last):
            return self._draw(n, n_uniform == last, generator).reshape(shape)
        rows = n // last if last else 0
        weighted = self._draw(rows * (last - n_uniform), False, generator).reshape(rows, last - n_uniform)
        uniform = self._draw(rows * n_uniform, True, generator).reshape(rows, n_uniform)
        return torch.cat([weighted, uniform], dim=1).reshape(shape)


def _tensor(column: pl.Series) -> torch.Tensor:
    return torch.from_numpy(column.cast(pl.Int64).to_numpy().copy())


def _in_sorted(values: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """``torch.isin(values, sorted_keys)`` by binary search: ``isin`` sorts its inputs on every
    call, which costs a full sort of every training (user, item) pair per batch (16M pairs: ~1 s);
    this is O(batch * log n)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, values).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[at] == values


def gathered_history(data: PreparedData, frame: pl.DataFrame) -> torch.Tensor:
    """Point-in-time histories ``[n, history_len]`` of out-of-core example rows (``user_idx``,
    ``n_before``), gathered from the users' positive sequences."""
    if data.sequences is None:
        raise DataError("out-of-core examples need the prepared data's positive sequences")
    return torch.from_numpy(
        data.sequences.histories(frame[USER_IDX].to_numpy(), frame[N_BEFORE].to_numpy(), data.history_len)
    )


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` rows (``n`` divisible by world size)."""
    per = n // world_size
    return slice(rank * per, (rank + 1) * per)


#: The most memory a :class:`UserItemPairs` bitset may take (one bit per user x item); above it the
#: pairs are kept as sorted keys and tested by binary search.
PAIR_BITSET_MAX_BYTES = 256 * 2**20


class UserItemPairs:
    """A set of (user, item) pairs answering ``contains(users [n], items [n, N]) -> bool [n, N]``.

    Held as a packed bitset over ``n_users x n_items`` when that fits in ``max_bytes`` (one byte
    gather per query: Gowalla's 30k x 41k pairs take 153 MB and 256 x 1000 queries ~1 ms), else as
    the sorted keys ``user * n_items + item`` (binary search, O(n N log pairs)). A dense
    ``[n, n_items]`` mask per batch costs ``n x n_items`` bytes zeroed per call (80 ms for a
    2048-row batch on Gowalla), which dominated one-negative training."""

    def __init__(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        n_users: int,
        n_items: int,
        max_bytes: int = PAIR_BITSET_MAX_BYTES,
    ) -> None:
        self.n_items = n_items
        keys = users.to(torch.int64) * n_items + items.to(torch.int64)
        n_bytes = (n_users * n_items + 7) // 8
        self.bits: torch.Tensor | None = None
        self.sorted_keys: torch.Tensor | None = None
        if n_bytes <= max_bytes:
            bits = np.zeros(n_bytes, dtype=np.uint8)
            k = keys.numpy()
            np.bitwise_or.at(bits, k >> 3, (1 << (k & 7)).astype(np.uint8))
            self.bits = torch.from_numpy(bits)
        else:
            self.sorted_keys = torch.unique(keys)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[n, N]`` bool: True where ``(users[r], items[r, c])`` is in the set."""
        keys = users.to(torch.int64).unsqueeze(1) * self.n_items + items
        if self.bits is not None:
            return ((self.bits[keys >> 3] >> (keys & 7).to(torch.uint8)) & 1).bool()
        assert self.sorted_keys is not None
        return _in_sorted(keys, self.sorted_keys)


@dataclass(frozen=True)
class RetrievalBatch:
    """Per-example negatives: ``items`` are the batch's distinct candidates (positives and
    negatives) and ``pattern`` says which candidate each of the ``[b, 1 + N]`` scores reads.
    A shared pool: ``items`` are the ``b`` positives then the ``N`` shared negatives, no pattern."""

    user: KeyedJaggedTensor  # b users
    # distinct candidates [U] (per example), b positives + N shared, or None: the whole catalogue
    items: KeyedJaggedTensor | None
    neg_mask: torch.Tensor  # [b, N] bool: False where a negative is the example's positive
    pattern: SampledPattern | None = None

    @property
    def size(self) -> int:
        return self.neg_mask.shape[0]

    def to(self, device: torch.device) -> RetrievalBatch:
        return RetrievalBatch(
            self.user.to(device),
            None if self.items is None else self.items.to(device),
            self.neg_mask.to(device),
            None if self.pattern is None else self.pattern.to(device),
        )


@dataclass(frozen=True)
class RankingBatch:
    dense: torch.Tensor  # [b, n_dense]
    sparse: KeyedJaggedTensor  # user then item keys
    labels: torch.Tensor  # [b] float 0/1
    reference_logits: torch.Tensor  # [b] the reference model's logits (0 without a reference)
    reference_mask: torch.Tensor  # [b] bool: rows the reference could score

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> RankingBatch:
        return RankingBatch(
            self.dense.to(device),
            self.sparse.to(device),
            self.labels.to(device),
            self.reference_logits.to(device),
            self.reference_mask.to(device),
        )


@dataclass(frozen=True)
class CascadeBatch:
    """Candidate lists scored by both cascade stages: row ``i`` of ``labels`` is one list of ``M``."""

    user: KeyedJaggedTensor  # b users (retrieval user tower)
    items: KeyedJaggedTensor  # b * M list items, list by list (retrieval item tower)
    dense: torch.Tensor  # [b * M, n_dense] ranker dense features
    sparse: KeyedJaggedTensor  # b * M (user, item) pairs, user then item keys (ranker)
    labels: torch.Tensor  # [b, M] 1 = the list's ground-truth item
    mask: torch.Tensor  # [b, M] bool, False where a sampled negative hit the positive

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> CascadeBatch:
        return CascadeBatch(
            self.user.to(device),
            self.items.to(device),
            self.dense.to(device),
            self.sparse.to(device),
            self.labels.to(device),
            self.mask.to(device),
        )


class _Batches:
    """Shared epoch mechanics: shuffle with the sampler's generator, split the tail fairly.

    In memory, every rank draws the same global batches and keeps its slice. Out of core
    (``shards``: parquet files of examples, see ``features.out_of_core``), each rank streams its
    own shards (``shards[rank::world_size]``) in an order drawn per epoch, holding one shard (plus
    the previous one's leftover rows) at a time, and draws its own ``batch_size / world_size``
    rows per step with its own generator; every rank takes the same number of steps (the fewest
    its shards allow), so a few rows per epoch may go unused when shards differ in size. The
    chunk being read is what the subclass's per-row tensors hold (:meth:`_set_chunk`).
    """

    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        shards: list[Path] | None = None,
    ) -> None:
        self.shards: list[Path] = []
        if shards is not None:
            counts = [pl.scan_parquet(p).select(pl.len()).collect().item() for p in shards]
            local = batch_size // world_size
            steps = min(sum(counts[r::world_size]) // max(local, 1) for r in range(world_size))
            if local < 1 or steps < 1:
                raise DataError(
                    f"{len(shards)} example shard(s) give {world_size} process(es) no full batch "
                    f"of {local} rows"
                )
            self.shards, self.steps = shards[rank::world_size], steps
            n_examples, batch_size, seed = steps * local, local, seed * 7919 + rank
            rank, world_size = 0, 1  # each process draws its own batches: no slicing of a global one
        if n_examples < world_size:
            raise DataError(f"{n_examples} training examples cannot be split over {world_size} processes")
        if batch_size < world_size:
            raise DataError(f"batch_size {batch_size} is smaller than the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        if self.shards:
            return self.steps
        full, tail = divmod(self.n_examples, self.batch_size)
        return full + (1 if tail >= self.world_size else 0)

    def _load_shard(self, path: Path) -> dict[str, torch.Tensor | None]:
        raise NotImplementedError

    def _set_chunk(self, chunk: dict[str, torch.Tensor | None]) -> None:
        for name, value in chunk.items():
            setattr(self, name, value)

    def _streamed_batches(self) -> Iterator[torch.Tensor]:
        """Row indices into the current chunk; chunks follow a per-epoch shard order."""
        steps, leftover = 0, None
        for i in torch.randperm(len(self.shards), generator=self.generator).tolist():
            chunk = self._load_shard(self.shards[i])
            if leftover is not None:
                chunk = {k: None if v is None else torch.cat([leftover[k], v]) for k, v in chunk.items()}
            self._set_chunk(chunk)
            n = len(next(v for v in chunk.values() if v is not None))
            order = torch.randperm(n, generator=self.generator)
            full = n - n % self.batch_size
            for start in range(0, full, self.batch_size):
                if steps == self.steps:
                    return
                steps += 1
                yield order[start : start + self.batch_size]
            rest = order[full:]
            leftover = {k: None if v is None else v[rest] for k, v in chunk.items()}

    def _global_batches(self) -> Iterator[torch.Tensor]:
        if self.shards:
            yield from self._streamed_batches()
            return
        order = torch.randperm(self.n_examples, generator=self.generator)
        for start in range(0, self.n_examples, self.batch_size):
            rows = order[start : start + self.batch_size]
            if len(rows) >= self.world_size:
                yield rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class RetrievalBatches(_Batches):
    """(user, positive item, negatives) batches from ``retrieval_examples``."""

    def __init__(
        self,
        data: PreparedData,
        tables: FeatureTables,
        sampler: NegativeSampler,
        n_negatives: int,
        shared_negatives: bool,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        user_keys: list[str] | None = None,
        item_keys: list[str] | None = None,
        over_catalogue: bool = False,
        exclude: Literal["positive", "user_positives"] = "positive",
    ) -> None:
        examples = data.retrieval_examples.sort(CANONICAL_ORDER)
        shards = data.example_shards["retrieval_examples"] if data.example_shards else None
        super().__init__(examples.height, batch_size, rank, world_size, seed, shards)
        self.data = data
        self.users = torch.from_numpy(examples["user_idx"].to_numpy().copy())
        self.positives = torch.from_numpy(examples["item_idx"].to_numpy().copy())
        self.context = context_tensor(examples, data.inputs)  # the event's request context (cascade)
        # point-in-time (no leakage), or None: the served latest history for every example (SimpleX)
        self.history: torch.Tensor | None = (
            None if data.training_history == "latest" else pad_lists(examples["history"], data.history_len)
        )
        self.tables = tables
        self.sampler = sampler
        self.n_negatives = n_negatives
        self.shared = shared_negatives
        # the sparse inputs the model reads (matrix factorisation reads ids only)
        self.user_keys = list(user_keys or tables.user_keys)
        self.item_keys = list(item_keys or tables.item_keys)
        # per-example negatives scored against the model's whole item table (see RetrievalTask)
        self.over_catalogue = over_catalogue and not shared_negatives
        # exclude = "user_positives": every user's training positives
        self.user_positives: UserItemPairs | None = None
        if exclude == "user_positives":
            if shared_negatives:
                raise ValueError("user positives are excluded from per-example negatives only")
            seen = data.train_events.filter(pl.col(LABEL) > 0)
            self.user_positives = UserItemPairs(
                _tensor(seen[USER_IDX]), _tensor(seen[ITEM_IDX]), data.n_users, tables.n_items
            )

    def _load_shard(self, path: Path) -> dict[str, torch.Tensor | None]:
        frame = pl.read_parquet(path, columns=[USER_IDX, ITEM_IDX, N_BEFORE, *self.data.inputs.context_names])
        history = None if self.data.training_history == "latest" else gathered_history(self.data, frame)
        return {
            "users": _tensor(frame[USER_IDX]),
            "positives": _tensor(frame[ITEM_IDX]),
            "history": history,
            "context": context_tensor(frame, self.data.inputs),
        }

    def __iter__(self) -> Iterator[RetrievalBatch]:
        for rows in self._global_batches():
            n_rows = len(rows)
            shape = (self.n_negatives,) if self.shared else (n_rows, self.n_negatives)
            negatives = self.sampler.sample(shape, self.generator)
            if self.user_positives is not None:
                self._redraw_user_positives(self.users[rows], negatives)
            local = rank_slice(n_rows - n_rows % self.world_size, self.rank, self.world_size)
            mine = rows[local]
            positives = self.positives[mine]
            if self.shared:
                neg_ids = negatives
                neg_mask = negatives.unsqueeze(0) != positives.unsqueeze(1)
            else:
                neg_ids = negatives[local]
                neg_mask = neg_ids != positives.unsqueeze(1)
            users = self.tables.users(self.users[mine], self._history(mine, positives))
            pattern, items = None, None
            if self.shared:
                items = self.tables.items(torch.cat([positives, neg_ids]))
            else:
                scored = torch.cat([positives.unsqueeze(1), neg_ids], dim=1)  # [b, 1 + N]
                if self.over_catalogue:
                    pattern = SampledPattern.over_catalogue(scored, self.tables.n_items)
                else:
                    pattern = SampledPattern.of(scored)
                    items = self.tables.items(pattern.unique)
            yield RetrievalBatch(
                user=padded_to_kjt(users, self.user_keys),
                items=None if items is None else padded_to_kjt(items, self.item_keys),
                neg_mask=neg_mask,
                pattern=pattern,
            )

    def _redraw_user_positives(self, users: torch.Tensor, negatives: torch.Tensor) -> None:
        """Draw again, in place, every negative ``[n, N]`` the user has a training positive with,
        until none is left (rejection sampling, as the IR-Benchmark sampler does)."""
        assert self.user_positives is not None
        hit = self.user_positives.contains(users, negatives)
        while bool(hit.any()):
            rows, cols = hit.nonzero(as_tuple=True)
            fresh = self.sampler.sample((len(rows),), self.generator)
            negatives[rows, cols] = fresh
            hit = torch.zeros_like(hit)
            hit[rows, cols] = self.user_positives.contains(users[rows], fresh.unsqueeze(1)).squeeze(1)

    def _history(self, rows: torch.Tensor, positives: torch.Tensor) -> torch.Tensor | None:
        """The examples' histories: point-in-time ones, or (``training_history = "latest"``) the
        user's latest history without the example's own item, as the SimpleX authors build it
        (``history.remove(item)``), so no example sees its target among its inputs."""
        if self.history is not None:
            return self.history[rows]
        if USER_HISTORY not in self.user_keys:
            return None
        latest = self.tables.user_history[self.users[rows]]
        return latest.masked_fill(latest == positives.unsqueeze(1), PAD)


class RankingBatches(_Batches):
    """Labelled train events plus, per event, sampled items that user never interacted with.

    Every row carries the user's point-in-time history at its event (negatives share their event's),
    so an event's own item is never in the history it is scored with, as at serving time.
    ``reference`` (Confidence Ranking) scores each row with the previous model, batch by batch.
    """

    def __init__(
        self,
        data: PreparedData,
        tables: FeatureTables,
        sampler: NegativeSampler,
        n_negatives: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        reference: Reference | None = None,
    ) -> None:
        events = data.ranking_examples.sort(CANONICAL_ORDER)
        shards = data.example_shards["ranking_examples"] if data.example_shards else None
        super().__init__(events.height, batch_size, rank, world_size, seed, shards)
        self.data = data
        self.history = pad_lists(events["history"], data.history_len)
        self.users = torch.from_numpy(events["user_idx"].to_numpy().copy())
        self.items = torch.from_numpy(events["item_idx"].to_numpy().copy())
        self.labels = torch.from_numpy(events["label"].cast(pl.Float32).to_numpy().copy())
        self.context = context_tensor(events, data.inputs)
        self.n_items = data.n_items
        seen = data.train_events if shards else events  # every (user, item) of the training part
        self.seen = torch.unique(_tensor(seen[USER_IDX]) * self.n_items + _tensor(seen[ITEM_IDX]))  # sorted
        self.tables = tables
        self.sampler = sampler
        self.n_negatives = n_negatives
        self.reference = reference

    def _load_shard(self, path: Path) -> dict[str, torch.Tensor | None]:
        frame = pl.read_parquet(
            path, columns=[USER_IDX, ITEM_IDX, LABEL, N_BEFORE, *self.data.inputs.context_names]
        )
        return {
            "users": _tensor(frame[USER_IDX]),
            "items": _tensor(frame[ITEM_IDX]),
            "labels": torch.from_numpy(frame[LABEL].cast(pl.Float32).to_numpy().copy()),
            "history": gathered_history(self.data, frame),
            "context": context_tensor(frame, self.data.inputs),
        }

    def __iter__(self) -> Iterator[RankingBatch]:
        for rows in self._global_batches():
            users = self.users[rows]
            negatives = self.sampler.sample((len(rows), self.n_negatives), self.generator)
            neg_users = users.unsqueeze(1).expand_as(negatives)
            unseen = ~_in_sorted(neg_users * self.n_items + negatives, self.seen)
            history = self.history[rows]
            neg_history = history.unsqueeze(1).expand(-1, self.n_negatives, -1)[unseen]
            all_history = torch.cat([history, neg_history])
            context = self.context[rows]  # negatives are scored in their event's request context
            all_context = torch.cat([context, context.unsqueeze(1).expand(-1, self.n_negatives, -1)[unseen]])
            all_users = torch.cat([users, neg_users[unseen]])
            all_items = torch.cat([self.items[rows], negatives[unseen]])
            all_labels = torch.cat([self.labels[rows], torch.zeros(int(unseen.sum()))])
            # Mix events and negatives so every rank's slice sees both.
            order = torch.randperm(len(all_users), generator=self.generator)
            n = len(order) - len(order) % self.world_size
            mine = order[rank_slice(n, self.rank, self.world_size)]
            u, i, h = all_users[mine], all_items[mine], all_history[mine]
            dense = self.tables.dense(u, i, all_context[mine] if self.tables.layout.context else None)
            if self.reference is None:
                reference, covered = torch.zeros(len(u)), torch.zeros(len(u), dtype=torch.bool)
            else:
                reference, covered = self.reference(u, i, h, dense)
            yield RankingBatch(
                dense=dense,
                sparse=padded_to_kjt(
                    {**self.tables.users(u, h), **self.tables.items(i)},
                    self.tables.user_keys + self.tables.item_keys,
                ),
                labels=all_labels[mine],
                reference_logits=reference,
                reference_mask=covered,
            )


class CascadeBatches(RetrievalBatches):
    """LCRON lists: each training positive with its own sampled negatives (``M = 1 + N`` items).

    Both stages see the same lists: the retrieval towers score them by inner product and the
    ranker scores every (user, item) pair with the user's point-in-time history, as served.
    """

    def __init__(
        self,
        data: PreparedData,
        tables: FeatureTables,
        sampler: NegativeSampler,
        n_negatives: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(data, tables, sampler, n_negatives, False, batch_size, rank, world_size, seed)

    def __iter__(self) -> Iterator[CascadeBatch]:  # type: ignore[override]  # lists, not retrieval batches
        for rows in self._global_batches():
            n_rows = len(rows)
            negatives = self.sampler.sample((n_rows, self.n_negatives), self.generator)
            local = rank_slice(n_rows - n_rows % self.world_size, self.rank, self.world_size)
            mine = rows[local]
            positives = self.positives[mine]
            lists = torch.cat([positives.unsqueeze(1), negatives[local]], dim=1)  # [b, M]
            mask = torch.cat(
                [
                    torch.ones_like(positives, dtype=torch.bool).unsqueeze(1),
                    lists[:, 1:] != positives.unsqueeze(1),
                ],
                dim=1,
            )
            labels = torch.zeros(lists.shape, dtype=torch.float32)
            labels[:, 0] = 1.0
            m = lists.shape[1]
            users = self.users[mine]
            history = self.tables.user_history[users] if self.history is None else self.history[mine]
            pair_users, pair_items = users.repeat_interleave(m), lists.reshape(-1)
            items = self.tables.items(pair_items)
            pair_user_features = self.tables.users(pair_users, history.repeat_interleave(m, dim=0))
            yield CascadeBatch(
                user=padded_to_kjt(self.tables.users(users, history), self.tables.user_keys),
                items=padded_to_kjt(items, self.tables.item_keys),
                dense=self.tables.dense(
                    pair_users,
                    pair_items,
                    self.context[mine].repeat_interleave(m, dim=0) if self.tables.layout.context else None,
                ),
                sparse=padded_to_kjt(
                    {**pair_user_features, **items}, self.tables.user_keys + self.tables.item_keys
                ),
                labels=labels,
                mask=mask,
            )
