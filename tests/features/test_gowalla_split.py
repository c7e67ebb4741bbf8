"""The real LightGCN split of Gowalla through the feature pipeline: the benchmark's protocol on its
true counts (29,858 users, 40,981 items, 810,128 train / 217,242 test interactions)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rankforge.features.pipeline import DataConfig, prepare

pytestmark = pytest.mark.gowalla


def test_validation_is_carved_from_train_and_nothing_is_lost(gowalla_dir: Path) -> None:
    data = prepare(
        DataConfig(source="lightgcn", path=gowalla_dir, split="provided", validation_fraction=0.05)
    )
    assert (data.n_users, data.n_items) == (29_858, 40_981)  # every user and item of train.txt has a row
    assert data.known_events().height == 810_128  # train + validation = train.txt
    assert data.test_events.height == 217_242  # test.txt, whole: no test item is dropped
    assert data.validation_events is not None
    share = data.validation_events.height / 810_128
    assert 0.045 < share < 0.055
    pairs = ["user_idx", "item_idx"]
    overlap = data.train_events.select(pairs).join(data.validation_events.select(pairs), on=pairs)
    assert overlap.height == 0  # validation events are not trained on
    # the same seed carves the same validation split
    again = prepare(
        DataConfig(source="lightgcn", path=gowalla_dir, split="provided", validation_fraction=0.05)
    )
    assert again.validation_events is not None
    assert again.validation_events.select(pairs).equals(data.validation_events.select(pairs))
    assert data.test_positives().filter(pl.col("label") > 0).height == 217_242
