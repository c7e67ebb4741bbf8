"""Start a job from a trained model's weights (``training.warm_start``), matched row by raw id.

A retrained model usually sees a grown catalogue: new users and items, a few gone. Its embedding
tables are indexed by this data's id mapping, the old model's by its own, so a table row is
copied only where both know the raw id; rows of ids the old model never saw keep their fresh
initialisation. Dense layers must have the same shapes (same model config), else the job stops
with a one-line error naming the first tensor that differs.

The weights come from the ``weights.pt`` every bundle carries beside its ONNX graphs (the torch
state dict it was exported from). Loading works on the live sharded model: each rank writes the
rows of its own table shards, so it is the same for one process or several.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from rankforge.bundles.bundle import WEIGHTS, Bundle
from rankforge.bundles.id_lookup import translate_ids
from rankforge.errors import ConfigError
from rankforge.features.declared_features import INDEX, VALUE
from rankforge.features.id_mapping import IdMapping
from rankforge.training.sharding import unwrap

#: Which id space each built-in sparse feature's table rows are indexed by; a declared feature's
#: rows are its vocabulary's (translated by value).
ROW_SPACE = {"user_id": "users", "user_history": "items", "item_id": "items"}
_TABLE = re.compile(r"\.t_(\w+)\.weight$")


def _source_rows(key: str, rows: int, maps: dict[str, np.ndarray], theirs: torch.Tensor) -> np.ndarray:
    """For our table ``key`` of ``rows`` rows: which of their rows fills each (-1: keep ours)."""
    found = _TABLE.search(key)
    space = ROW_SPACE.get(found.group(1), found.group(1)) if found else None
    if space in maps:
        return maps[space]
    if theirs.shape[0] != rows:
        raise ConfigError(f"training.warm_start: {key} has {theirs.shape[0]} rows there, {rows} here")
    return np.arange(rows)  # a table of no id space: the same rows in the same order


def translate_values(ours: pl.DataFrame, theirs: pl.DataFrame) -> np.ndarray:
    """Our vocabulary index -> theirs (``-1`` where they never saw the value)."""
    joined = ours.sort(INDEX).join(theirs, on=VALUE, how="left", suffix="_theirs", maintain_order="left")
    return joined[f"{INDEX}_theirs"].fill_null(-1).to_numpy().astype(np.int64)


@torch.no_grad()
def warm_start(
    model: nn.Module,
    bundle: Bundle,
    mapping: IdMapping,
    vocabularies: dict[str, pl.DataFrame] | None = None,
    prefix: str = "model.",
) -> dict[str, int]:
    """Copy ``bundle``'s weights into the live model in place; returns how many table rows came
    from it per id space (logged with the run)."""
    path = bundle.path(WEIGHTS)
    if not path.is_file():
        raise ConfigError(f"training.warm_start: bundle {str(bundle.directory)[:120]} has no {WEIGHTS}")
    theirs: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    vocabularies = {n: v for n, v in (vocabularies or {}).items() if n in bundle.manifest.vocabularies}
    maps = translate_ids(mapping, bundle.id_mapping)
    for name, vocab in vocabularies.items():
        maps[name] = translate_values(vocab, bundle.vocabulary(name))
    model = unwrap(model)
    state = model.state_dict()
    ours = {key: key[key.index(prefix) + len(prefix) :] for key in state if prefix in key}
    missing = sorted(set(ours.values()) - set(theirs))
    if missing:
        raise ConfigError(
            f"training.warm_start: the bundle's model has no {missing[0]} (another model kind?)"
        )
    for key, name in ours.items():
        value, source = state[key], theirs[name]
        if isinstance(value, ShardedTensor) or _TABLE.search(name):
            _copy_rows(value, source, _source_rows(name, value.size(0), maps, source), name)
        else:
            if tuple(value.shape) != tuple(source.shape):
                raise ConfigError(
                    f"training.warm_start: {name} is {tuple(source.shape)} there, {tuple(value.shape)} here "
                    "(another model config?)"
                )
            value.copy_(source)
    model.load_state_dict(state)
    return {space: int((rows >= 0).sum()) for space, rows in maps.items()}


def _copy_rows(
    value: torch.Tensor | ShardedTensor, source: torch.Tensor, rows: np.ndarray, name: str
) -> None:
    width = value.size(1)
    if source.shape[1] != width:
        raise ConfigError(f"training.warm_start: {name} has dimension {source.shape[1]} there, {width} here")
    shards = (
        [(s.tensor, s.metadata.shard_offsets) for s in value.local_shards()]
        if isinstance(value, ShardedTensor)
        else [(value, [0, 0])]
    )
    for local, (row0, col0) in shards:
        mine = rows[row0 : row0 + local.shape[0]]
        known = torch.from_numpy(np.flatnonzero(mine >= 0))
        local[known] = source[torch.from_numpy(mine[mine >= 0]), col0 : col0 + local.shape[1]].to(local.dtype)
