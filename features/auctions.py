"""Ad auction logs: the documented schema, validation with errors that name the bad rows, and the
padded ``[auctions, ads]`` tensors the auction trainer and the welfare metrics read.

One row per ad in an auction::

    auction_id  int or string   the auction (request) the ad competed in
    user_id     int             the user the auction was for (the interaction log's ids)
    ad_id       int             the ad (an item of the catalogue: its features are the item's)
    bid         float > 0       the advertiser's cost-per-click bid, finite
    click       0 or 1          whether the shown ad was clicked
    position    int, optional   the slot it was shown in (null: not shown)
    true_ctr    float, optional the true click probability (simulated logs only: exact welfare)

Every auction needs at least two ads (a single ad has nothing to be ranked against). Read from
parquet or CSV (any file name; the extension decides).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from rankforge.errors import DataError
from rankforge.features.id_mapping import IdMapping

AUCTION_SCHEMA: dict[str, pl.DataType] = {
    "auction_id": pl.Int64,
    "user_id": pl.Int64,
    "ad_id": pl.Int64,
    "bid": pl.Float64,
    "click": pl.Int8,
    "position": pl.Int32,
}
REQUIRED = ("auction_id", "user_id", "ad_id", "bid", "click")
SHOWN = 5  # offending rows quoted in an error


def _preview(frame: pl.DataFrame, columns: list[str]) -> str:
    rows = frame.select(columns).head(SHOWN).rows()
    more = f" (+{frame.height - SHOWN} more)" if frame.height > SHOWN else ""
    return ", ".join(str(dict(zip(columns, r, strict=True))) for r in rows) + more


def read_auctions(path: str | Path) -> pl.DataFrame:
    """Read and validate an auction log (``.parquet`` or ``.csv``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"auction log not found: {p}")
    try:
        frame = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataError(f"cannot read auction log {p}: {str(exc)[:200]}") from exc
    return validate_auctions(frame, str(p))


def validate_auctions(frame: pl.DataFrame, origin: str = "auction log") -> pl.DataFrame:
    """The log in the documented schema, or a ``DataError`` naming the column and a few bad rows."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing}; has {frame.columns}")
    for column in REQUIRED:
        nulls = frame.filter(pl.col(column).is_null())
        if nulls.height:
            raise DataError(
                f"{origin}: {nulls.height} row(s) with a null {column}: {_preview(nulls, list(REQUIRED))}"
            )
    casts = []
    for column, dtype in AUCTION_SCHEMA.items():
        if column == "auction_id" or column not in frame.columns:
            continue
        casted = frame[column].cast(dtype, strict=False)
        bad = frame.filter(casted.is_null() & frame[column].is_not_null())
        if bad.height:
            raise DataError(f"{origin}: column {column} is not {dtype}: {_preview(bad, [column])}")
        casts.append(casted.alias(column))
    frame = frame.with_columns(casts)
    bids = frame.filter(~pl.col("bid").is_finite() | (pl.col("bid") <= 0))
    if bids.height:
        raise DataError(
            f"{origin}: bids must be positive and finite: {_preview(bids, ['auction_id', 'ad_id', 'bid'])}"
        )
    clicks = frame.filter(~pl.col("click").is_in([0, 1]))
    if clicks.height:
        raise DataError(
            f"{origin}: click must be 0 or 1: {_preview(clicks, ['auction_id', 'ad_id', 'click'])}"
        )
    if "true_ctr" in frame.columns:
        ctr = frame.filter(~pl.col("true_ctr").is_between(0, 1) | pl.col("true_ctr").is_null())
        if ctr.height:
            raise DataError(
                f"{origin}: true_ctr must lie in [0, 1]: {_preview(ctr, ['auction_id', 'ad_id', 'true_ctr'])}"
            )
    sizes = frame.group_by("auction_id").agg(
        pl.len().alias("ads"), pl.col("ad_id").n_unique().alias("distinct")
    )
    lonely = sizes.filter(pl.col("ads") < 2)
    if lonely.height:
        raise DataError(
            f"{origin}: every auction needs at least two ads: {_preview(lonely, ['auction_id', 'ads'])}"
        )
    repeated = sizes.filter(pl.col("distinct") < pl.col("ads"))
    if repeated.height:
        raise DataError(f"{origin}: an ad appears twice in one auction: {_preview(repeated, ['auction_id'])}")
    return frame


def split_auctions(
    frame: pl.DataFrame, test_fraction: float, validation_fraction: float, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(train, validation, test) by whole auctions, by a seeded hash of the auction id."""
    u = (pl.col("auction_id").hash(seed) % 1_000_000).cast(pl.Float64) / 1_000_000
    keyed = frame.with_columns(u.alias("_u"))
    test = keyed.filter(pl.col("_u") < test_fraction)
    validation = keyed.filter(
        (pl.col("_u") >= test_fraction) & (pl.col("_u") < test_fraction + validation_fraction)
    )
    train = keyed.filter(pl.col("_u") >= test_fraction + validation_fraction)
    return train.drop("_u"), validation.drop("_u"), test.drop("_u")


@dataclass(frozen=True)
class AuctionTensors:
    """Auctions padded to ``[A, M]``: users and ads as data indices, ``-1``/False where padded."""

    users: torch.Tensor  # [A] int64 (-1: a user the interaction log does not know: cold start)
    ads: torch.Tensor  # [A, M] int64 item indices
    bids: torch.Tensor  # [A, M] float32 (1.0 in padding)
    clicks: torch.Tensor  # [A, M] float32
    mask: torch.Tensor  # [A, M] bool
    true_ctr: torch.Tensor | None  # [A, M] float64, simulated logs only

    @property
    def n_auctions(self) -> int:
        return int(self.users.shape[0])

    def filled_ads(self) -> torch.Tensor:
        """``[A, M]`` ads with every padding slot holding its auction's first ad, so each slot is a
        valid model input (its score is masked out afterwards)."""
        return torch.where(self.mask, self.ads, self.ads[:, :1].expand_as(self.ads))

    def slots(self) -> pl.DataFrame:
        """Every ``[A, M]`` slot as a ``(user_idx, item_idx)`` row, auction by auction (padding
        filled as in :meth:`filled_ads`): what a served ranker scores for these auctions."""
        m = self.ads.shape[1]
        return pl.DataFrame(
            {
                "user_idx": self.users.repeat_interleave(m).numpy(),
                "item_idx": self.filled_ads().reshape(-1).numpy(),
            }
        )

    def outcome_inputs(self) -> dict[str, np.ndarray | None]:
        """``bids, clicks, mask, true_ctr`` as the numpy arrays the welfare metrics take
        (``evaluation.auction_metrics``: ``auction_outcomes(pctr, **auctions.outcome_inputs())``)."""
        return {
            "bids": self.bids.double().numpy(),
            "clicks": self.clicks.double().numpy(),
            "mask": self.mask.numpy(),
            "true_ctr": None if self.true_ctr is None else self.true_ctr.numpy(),
        }

    def take(self, rows: torch.Tensor) -> AuctionTensors:
        return AuctionTensors(
            self.users[rows],
            self.ads[rows],
            self.bids[rows],
            self.clicks[rows],
            self.mask[rows],
            None if self.true_ctr is None else self.true_ctr[rows],
        )


def encode_auctions(frame: pl.DataFrame, mapping: IdMapping) -> AuctionTensors:
    """Pad a validated log by auction (in ``auction_id`` order); ads outside the catalogue are an error."""
    encoded = frame.join(mapping.items.rename({"item_id": "ad_id"}), on="ad_id", how="left").join(
        mapping.users, on="user_id", how="left"
    )
    unknown = encoded.filter(pl.col("item_idx").is_null())
    if unknown.height:
        raise DataError(
            f"auction log: {unknown.height} row(s) name ads outside the item catalogue: "
            f"{_preview(unknown, ['auction_id', 'ad_id'])}"
        )
    columns = ["item_idx", "bid", "click"] + (["true_ctr"] if "true_ctr" in frame.columns else [])
    grouped = (
        encoded.sort("auction_id", "ad_id")
        .group_by("auction_id", maintain_order=True)
        .agg(pl.col("user_idx").first(), *[pl.col(c) for c in columns])
    )
    lengths = grouped["item_idx"].list.len().to_numpy()
    a, m = grouped.height, int(lengths.max()) if grouped.height else 0
    mask = np.arange(m)[None, :] < lengths[:, None]

    def padded(column: str, fill: float, dtype: np.dtype) -> np.ndarray:
        out = np.full((a, m), fill, dtype=dtype)
        out[mask] = grouped[column].explode().to_numpy().astype(dtype)
        return out

    return AuctionTensors(
        users=torch.from_numpy(grouped["user_idx"].fill_null(-1).to_numpy().astype(np.int64)),
        ads=torch.from_numpy(padded("item_idx", -1, np.int64)),
        bids=torch.from_numpy(padded("bid", 1.0, np.float32)),
        clicks=torch.from_numpy(padded("click", 0.0, np.float32)),
        mask=torch.from_numpy(mask),
        true_ctr=torch.from_numpy(padded("true_ctr", 0.0, np.float64))
        if "true_ctr" in frame.columns
        else None,
    )
