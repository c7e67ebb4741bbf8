"""The in-process item table: lookups, padded id rows as the export pads them, the stored blocks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rankforge.bundles.id_lookup import IdLookup
from rankforge.bundles.runtime import pad_rows
from rankforge.errors import DataError
from rankforge.serving.feature_writer import item_frame
from rankforge.serving.item_table import ItemTable, decode_blocks, encode_blocks


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [30, 10, 20, 40],
            "pop": [0.3, 0.1, 0.2, 0.4],
            "tags": [[7, 8, 9], [], [1, 2, 3, 4, 5], None],
        },
        schema_overrides={"tags": pl.List(pl.Int64)},
    )


def test_rows_find_raw_ids_and_mark_the_absent() -> None:
    table = ItemTable.from_frame(_frame(), ["pop"], ["tags"])
    rows = table.rows(np.array([40, 10, 99, 30, -5]))
    assert rows.tolist() == [3, 0, -1, 2, -1]
    assert table.dense[rows[rows >= 0], 0].tolist() == pytest.approx([0.4, 0.1, 0.3])
    assert ItemTable.from_frame(_frame().head(0), ["pop"], ["tags"]).rows(np.array([1])).tolist() == [-1]


def test_model_id_spaces_meet_the_table_by_gathers_equal_to_lookups() -> None:
    table = ItemTable.from_frame(_frame(), ["pop"], ["tags"])  # raw ids 10 20 30 40
    # a model that knows 20, 40 and 50 (not in this version), indexed in its own order
    model = IdLookup(pl.DataFrame({"item_id": [50, 20, 40], "item_idx": [0, 1, 2]}), "item_id", "item_idx")
    rows_of = table.rows_of_index(model)
    assert rows_of.tolist() == [-1, 1, 3]  # item 50 is not in the version
    assert rows_of.tolist() == table.rows(model.decode(np.arange(3))).tolist()
    index_of = table.index_of_rows(model)
    assert index_of.tolist() == [-1, 1, -1, 2]  # 10 and 30 are unknown to the model
    assert index_of.tolist() == model.encode(table.ids).tolist()
    assert table.rows_of_index(model) is rows_of  # computed once per model
    other = IdLookup(pl.DataFrame({"item_id": [10, 30], "item_idx": [1, 0]}), "item_id", "item_idx")
    assert table.index_of_rows(other).tolist() == [1, -1, 0, -1]
    assert table.index_of_rows(model) is index_of


@pytest.mark.parametrize("width", [0, 1, 3, 6])
def test_padded_rows_equal_the_exports_padding(width: int) -> None:
    """The last ``width`` ids of each row, right-padded with -1: exactly what ``pad_rows`` (the
    runtime's per-list padding, the export's rule) gives for the same lists."""
    table = ItemTable.from_frame(_frame(), ["pop"], ["tags"])
    rows = np.array([2, 0, 1, 3, 1])
    expected = pad_rows([np.asarray(table.lists[0].row(r)) for r in rows], width)
    np.testing.assert_array_equal(table.lists[0].padded(rows, width), expected)
    assert table.lists[0].row(1).tolist() == [1, 2, 3, 4, 5] and table.lists[0].row(3).tolist() == []


def test_blocks_round_trip_and_foreign_bytes_are_a_data_error() -> None:
    frame = _frame()
    blocks = encode_blocks(frame, block_items=3)
    assert len(blocks) == 2 and all(b.startswith(b"ARROW1") for b in blocks)
    table = decode_blocks(blocks, ["pop"], ["tags"])
    expected = ItemTable.from_frame(frame, ["pop"], ["tags"])
    np.testing.assert_array_equal(table.ids, expected.ids)
    np.testing.assert_array_equal(table.dense, expected.dense)
    assert table.to_frame(["pop"], ["tags"]).equals(expected.to_frame(["pop"], ["tags"]))
    assert len(encode_blocks(frame.head(0))) == 1  # an empty catalogue is still one block
    with pytest.raises(DataError, match=r"item feature block 1 does not decode \(5 bytes\)"):
        decode_blocks([blocks[0], b"nope!"], ["pop"], ["tags"])


def test_bad_item_rows_are_named() -> None:
    with pytest.raises(DataError, match=r"lack column\(s\) \['tags'\]"):
        ItemTable.from_frame(_frame().drop("tags"), ["pop"], ["tags"])
    with pytest.raises(DataError, match="item id 10 twice"):
        ItemTable.from_frame(pl.concat([_frame(), _frame().head(2)]), ["pop"], ["tags"])
    nulls = _frame().with_columns(pl.Series("tags", [[1, None], [], [], []], dtype=pl.List(pl.Int64)))
    with pytest.raises(DataError, match="'tags' holds null ids"):
        ItemTable.from_frame(nulls, ["pop"], ["tags"])


def test_the_writers_item_rows_hold_what_training_reads(serving_data) -> None:
    """Dense features as ``dense_matrix`` gives them to training (float32, nulls as 0), and the
    declared item features as vocabulary indices, keyed by raw item id."""
    d = serving_data
    frame = item_frame(d)
    table = ItemTable.from_frame(frame, list(d.inputs.item_dense), ["item_genres"])
    assert len(table) == d.n_items
    some = d.item_features.sample(5, seed=0)
    rows = table.rows(some["item_id"].to_numpy())
    for name_at, name in enumerate(d.inputs.item_dense):
        np.testing.assert_allclose(table.dense[rows, name_at], some[name].cast(pl.Float32).fill_null(0.0))
    assert [table.lists[0].row(r).tolist() for r in rows] == some["item_genres"].to_list()
