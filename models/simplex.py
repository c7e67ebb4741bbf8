"""SimpleX (Mao et al., "SimpleX: A Simple and Strong Baseline for Collaborative Filtering", CIKM 2021).

Matrix factorisation plus a *behaviour aggregation* of the user's interacted items (Sec. 3.2)::

    p_u = agg_{j in H_u} e_j                      (mean, or attention keyed by the user)
    h_u = g * e_u + (1 - g) * V p_u               (V: d x d linear map, no bias; g: the gating weight)
    score(u, i) = cos(h_u, e_i)                   (dropout on the normalised h_u while training)

The aggregators of the authors' code (reczoo/RecZoo, ``SimpleX.BehaviorAggregator``):

* ``mean``: the mean of the history vectors (an empty history pools to zero).
* ``user_attention``: ``a_j = softmax_j(tanh(W_k e_j + b_k) . e_u)`` and ``p_u = sum_j a_j e_j``.
  The authors' code pads every history to the longest one and does *not* mask the padding out of
  the softmax: each padding slot enters its denominator with logit 0 (``exp(0) = 1``), which
  shrinks the history's weight for users with short histories. ``attention_pad_length = L``
  reproduces that (``L - |H_u|`` such slots; their padding vector is zero, so they add nothing to
  the numerator); the default 0 is the paper's masked softmax.

History vectors come from the *item* table (``history_table = "shared"``, the authors'
``share_embedding`` of AmazonCDs) or from a table of their own (``"separate"``, their Gowalla
config). With ``g = 1`` the history does not reach the score, and the model does not read it.
Where the dropout sits follows the authors' code too: on the user vector *after* normalisation
(``net_dropout``), so a training score may exceed 1; served vectors have none.
Dense layers start from Xavier-normal weights and zero biases, as in the authors' ``init_weights``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from rankforge.models.id_tables import IdTableModel, IdTwin, id_table
from rankforge.models.scoring import COSINE, Scoring

Aggregator = Literal["mean", "user_attention"]
HistoryTable = Literal["shared", "separate"]
HISTORY = "user_history"


def _xavier(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class SimpleX(IdTableModel):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        gamma: float = 0.5,
        dropout: float = 0.1,
        scoring: Scoring = COSINE,
        init_std: float | None = None,
        device: torch.device | None = None,
        aggregator: Aggregator = "mean",
        history_table: HistoryTable = "shared",
        attention_pad_length: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma (the gating weight) must lie in [0, 1], got {gamma!r}")
        if aggregator not in ("mean", "user_attention"):
            raise ValueError(f"aggregator must be 'mean' or 'user_attention', got {aggregator!r}")
        if history_table not in ("shared", "separate"):
            raise ValueError(f"history_table must be 'shared' or 'separate', got {history_table!r}")
        if attention_pad_length < 0:
            raise ValueError(f"attention_pad_length must be >= 0, got {attention_pad_length!r}")
        self.scoring = scoring
        self.gamma = float(gamma)
        self.aggregator = aggregator
        self.attention_pad_length = int(attention_pad_length)
        self.reads_history = self.gamma < 1.0
        self.output_dim = embedding_dim
        item_features = ["item_id"]
        tables = [id_table("t_user_id", ["user_id"], n_users, embedding_dim, init_std)]
        if history_table == "shared":
            item_features.append(HISTORY)
        else:
            tables.append(id_table("t_user_history", [HISTORY], n_items, embedding_dim, init_std))
        tables.append(id_table("t_item_id", item_features, n_items, embedding_dim, init_std))
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self._collection_built()
        dense_device = device if device is not None and device.type != "meta" else None
        self.history_map = _xavier(nn.Linear(embedding_dim, embedding_dim, bias=False, device=dense_device))
        self.attention_key = (
            nn.Sequential(_xavier(nn.Linear(embedding_dim, embedding_dim, device=dense_device)), nn.Tanh())
            if aggregator == "user_attention"
            else None
        )
        self.query_dropout = nn.Dropout(dropout)

    @property
    def user_keys(self) -> list[str]:
        return ["user_id", HISTORY] if self.reads_history else ["user_id"]

    def aggregate(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``g * e_u + (1 - g) * V p_u`` from ``e_u`` ``[B, d]`` and the aggregated history ``[B, d]``."""
        return self.gamma * user + (1.0 - self.gamma) * self.history_map(history)

    def attend(self, user: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``p_u`` ``[B, d]`` by user attention over jagged histories: ``items`` ``[nnz, d]`` are
        the users' history vectors back to back, ``lengths`` ``[B]`` how many each has."""
        assert self.attention_key is not None
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=items.device), lengths)
        logits = (self.attention_key(items) * user[segment]).sum(-1)  # [nnz]
        pads = (self.attention_pad_length - lengths).clamp(min=0).to(logits.dtype)  # [B]
        # a stable softmax: shift each user's logits by their max (0 counts when padding slots enter)
        floor = torch.where(pads > 0, 0.0, float("-inf"))
        shift = floor.scatter_reduce(0, segment, logits.detach(), reduce="amax", include_self=True)
        shift = torch.nan_to_num(shift, neginf=0.0)
        weights = torch.exp(logits - shift[segment])
        denominator = torch.zeros_like(pads).index_add(0, segment, weights) + pads * torch.exp(-shift)
        weights = weights / denominator[segment].clamp_min(1e-30)
        return torch.zeros_like(user).index_add(0, segment, weights.unsqueeze(-1) * items)

    def _user_parts(self, user_kjt: KeyedJaggedTensor) -> tuple[list[KeyedJaggedTensor], torch.Tensor | None]:
        """The KJTs to look up for the user side; for attention, every history item is its own
        bag (one row each), and the per-user history lengths are returned."""
        if self.aggregator != "user_attention" or not self.reads_history:
            return [user_kjt], None
        parts = user_kjt.to_dict()
        history = parts[HISTORY]
        lengths = history.lengths().to(torch.int64)
        users = KeyedJaggedTensor.from_lengths_sync(
            keys=["user_id"], values=parts["user_id"].values(), lengths=parts["user_id"].lengths()
        )
        items = KeyedJaggedTensor.from_lengths_sync(
            keys=[HISTORY],
            values=history.values(),
            lengths=torch.ones_like(history.values(), dtype=torch.int32),
        )
        return [users, items], lengths

    def _user_from(
        self, pooled: dict[str, torch.Tensor], n: int, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        user = pooled["user_id"][:n]
        if not self.reads_history:
            return user
        if lengths is None:  # mean: the EBC's MEAN pooling of the history bag
            return self.aggregate(user, pooled[HISTORY][:n])
        items = pooled[HISTORY][: int(lengths.sum())]
        return self.aggregate(user, self.attend(user, items, lengths))

    def user_embedding(self, user_kjt: KeyedJaggedTensor) -> torch.Tensor:
        parts, lengths = self._user_parts(user_kjt)
        return self._user_from(self._pooled(*parts), user_kjt.stride(), lengths)

    def forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if item_kjt is None:
            return self.user_embedding(user_kjt), None
        parts, lengths = self._user_parts(user_kjt)
        pooled = self._pooled(*parts, item_kjt)  # one lookup per step
        return self._user_from(pooled, user_kjt.stride(), lengths), pooled["item_id"][: item_kjt.stride()]

    def portable(self, side: str) -> nn.Module:
        return IdTwin(self.ebc, "item_id") if side == "item" else _SimpleXUserTwin(self)


class _SimpleXUserTwin(nn.Module):
    """The user side over padded ids ``user_id [B, 1]`` (and ``user_history [B, L]``, -1 padded)."""

    def __init__(self, model: SimpleX) -> None:
        super().__init__()
        self.input_names = list(model.user_keys)
        self.reads_history = model.reads_history
        self.history_map = model.history_map
        self.attention_key = model.attention_key
        self.attention_pad_length = model.attention_pad_length
        self.gamma = model.gamma
        state = model.ebc.state_dict()
        self.user_table = nn.Parameter(state["embedding_bags.t_user_id.weight"].detach().clone(), False)
        history = "t_user_history" if "embedding_bags.t_user_history.weight" in state else "t_item_id"
        self.history_table = nn.Parameter(state[f"embedding_bags.{history}.weight"].detach().clone(), False)

    def forward(self, user_id: torch.Tensor, user_history: torch.Tensor | None = None) -> torch.Tensor:
        user = nn.functional.embedding(user_id[:, 0].clamp(min=0), self.user_table)
        if not self.reads_history:
            return user
        assert user_history is not None
        mask = user_history >= 0  # [B, L]
        items = nn.functional.embedding(user_history.clamp(min=0), self.history_table)  # [B, L, d]
        items = items * mask.unsqueeze(-1).to(items.dtype)
        count = mask.sum(dim=1, keepdim=True).to(items.dtype)
        if self.attention_key is None:
            history = items.sum(dim=1) / count.clamp(min=1.0)
        else:
            logits = (self.attention_key(items) * user.unsqueeze(1)).sum(-1)  # [B, L]
            logits = logits.masked_fill(~mask, float("-inf"))
            pads = (self.attention_pad_length - count).clamp(min=0.0)  # [B, 1]
            shift = torch.maximum(
                logits.amax(dim=1, keepdim=True),
                torch.where(pads > 0, 0.0, float("-inf")),
            )
            shift = torch.where(torch.isinf(shift), torch.zeros_like(shift), shift)
            weights = torch.exp(logits - shift)
            denominator = weights.sum(dim=1, keepdim=True) + pads * torch.exp(-shift)
            weights = weights / denominator.clamp_min(1e-30)
            history = (weights.unsqueeze(-1) * items).sum(dim=1)
        return self.gamma * user + (1.0 - self.gamma) * self.history_map(history)
