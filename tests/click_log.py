"""A new user's click log, as the README tells them to bring one: string member and sku ids, ISO
timestamps, a 0/1 ``clicked`` column and an item table with ';'-separated categories. Members join
over time, so a time split leaves some of them only after the cut (cold users), and the latest
members click new skus too (known only from the item table)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rankforge.features.synthetic import generate_log

LOG = """
[data]
source = "file"
path = "events.csv"
split = "time"
test_from = 1631500000      # a calendar cut: every event from 2021-09-13 on is held out
history_len = 10

[data.log]
user = "member"
item = "sku"
timestamp = "ts"
label = "clicked"
label_rule = "binary"
ids = "string"
"""

ITEM_TABLE = """
[data.item_table]
path = "items.csv"
key = "sku"

[[data.features]]
name = "categories"
side = "item"
kind = "multi_categorical"
column = "categories"
separator = ";"
max_len = 4
"""

MODELS = {
    "two_tower": """
[model]
kind = "retrieval"
embedding_dim = 8
tower_sizes = [16, 8]

[objective]
name = "sampled_softmax"
params = { temperature = 0.1 }

[negatives]
count = 8
""",
    "mf": """
[model]
kind = "mf"
embedding_dim = 8

[objective]
name = "ccl"
params = { margin = 0.5, negative_weight = 1.0 }

[negatives]
count = 8
""",
    "ranker": """
[model]
kind = "ranking"
embedding_dim = 8
dense_sizes = [8]
over_sizes = [8, 1]

[objective]
name = "bce"

[negatives]
count = 0
""",
    "popularity": """
[model]
kind = "popularity"
""",
}


def write_click_log(folder: Path, n_members: int = 80, n_skus: int = 120, seed: int = 5) -> Path:
    """events.csv and items.csv in ``folder``; returns ``folder``."""
    log = generate_log(n_members, n_skus, min_events=8, max_events=30, seed=seed)
    day = 86_400
    joined = (pl.col("user_id") * (400 * day) // n_members).cast(pl.Int64)  # members join over 400 days
    # the catalogue grows: the latest members also click skus that are new (listed in items.csv)
    new_sku = (pl.col("user_id") > 2 * n_members // 3) & (pl.col("item_id") % 3 == 0)
    sku = pl.when(new_sku).then(pl.col("item_id") + n_skus).otherwise(pl.col("item_id"))
    events = log.interactions.select(
        ("m_" + pl.col("user_id").cast(pl.String)).alias("member"),
        ("sku-" + sku.cast(pl.String)).alias("sku"),
        pl.from_epoch(pl.col("timestamp") + joined).dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("ts"),
        (pl.col("rating") >= 4).cast(pl.Int8).alias("clicked"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    events.write_csv(folder / "events.csv")
    items = log.items.select("item_id", pl.col("genres").list.join(";").alias("categories"))
    pl.concat([items, items.with_columns(pl.col("item_id") + n_skus)]).select(
        ("sku-" + pl.col("item_id").cast(pl.String)).alias("sku"), "categories"
    ).write_csv(folder / "items.csv")
    return folder


#: The held-out part of the log: every event at or after it (``test_from`` above).
TEST_FROM = 1631500000


def write_config(
    folder: Path,
    model: str,
    item_table: bool = True,
    name: str | None = None,
    optimizer: dict[str, object] | None = None,
    seed: int = 0,
    **training: object,
) -> Path:
    """A training config for ``model`` (a key of MODELS) on the click log in ``folder``, written
    to ``{name or model}.toml`` and registered as ``clicks-{model}``."""
    name = name or model
    settings = {"epochs": 2, "batch_size": 64, **training}
    lines = [f"output_dir = {str(folder / 'runs' / name)!r}", f"seed = {seed}", LOG]
    if item_table:
        lines.append(ITEM_TABLE)
    lines.append(MODELS[model])
    lines.append("[training]\n" + "\n".join(f"{k} = {v!r}" for k, v in settings.items()))
    if optimizer:
        lines.append("[optimizer]\n" + "\n".join(f"{k} = {v!r}" for k, v in optimizer.items()))
    lines.append(f'[mlflow]\nregistered_model = "clicks-{model}"\nalias = "champion"\n')
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path
