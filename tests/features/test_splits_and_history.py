import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.history import latest_history, with_point_in_time_history
from rankforge.features.splits import global_time_split, leave_last_out, random_leave_out


def log() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3],
            "item_id": [10, 11, 12, 10, 13, 14],
            "rating": [5.0, 4.0, 3.0, 5.0, 1.0, 4.0],
            "timestamp": [1, 2, 3, 4, 5, 6],
        }
    )


def test_leave_last_out_keeps_users_with_enough_history() -> None:
    train, test = leave_last_out(log(), n_last=1, min_train=1)
    assert sorted(test.collect().select("user_id", "item_id").rows()) == [(1, 12), (2, 13)]
    # user 3 has a single event: it stays in train instead of leaving the user empty there
    assert train.collect().filter(pl.col("user_id") == 3).height == 1


def test_leave_last_out_breaks_ties_on_time_by_item_not_by_row_order() -> None:
    # user 1's last two events share a time: the larger item id is "last", whichever row is first
    rows = {"user_id": [1, 1, 1], "item_id": [12, 11, 10], "timestamp": [5, 5, 1]}
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        frame = pl.LazyFrame({k: [v[i] for i in order] for k, v in rows.items()})
        train, test = leave_last_out(frame, n_last=1)
        assert test.collect()["item_id"].to_list() == [12]
        # the parts come out in (user, time, item) order, which ``ordered=True`` expects
        assert train.collect()["item_id"].to_list() == [10, 11]
        _, again = leave_last_out(train, n_last=1, ordered=True)
        assert again.collect()["item_id"].to_list() == [11]


def test_global_time_split_is_strictly_after_cutoff() -> None:
    train, test = global_time_split(log(), test_fraction=0.34)
    assert train.collect()["timestamp"].max() < test.collect()["timestamp"].min()
    assert train.collect().height + test.collect().height == 6


def test_random_leave_out_partitions_and_is_deterministic() -> None:
    a_train, a_test = random_leave_out(log(), 0.5, seed=1)
    _, b_test = random_leave_out(log(), 0.5, seed=1)
    assert a_test.collect().equals(b_test.collect())
    assert a_train.collect().height + a_test.collect().height == 6


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="test fraction"):
        global_time_split(log(), fraction)


def events() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "user_idx": [0, 0, 0, 0, 1],
            "item_idx": [5, 6, 7, 8, 5],
            "timestamp": [10, 20, 20, 30, 15],
            "label": [1, 0, 1, 1, 1],
        }
    )


def test_point_in_time_history_excludes_the_present_and_negatives() -> None:
    examples = events().filter(pl.col("label") == 1).select("user_idx", "item_idx", "timestamp")
    out = with_point_in_time_history(examples, events(), max_len=5).collect().sort("user_idx", "timestamp")
    got = {(r["user_idx"], r["item_idx"]): r["history"] for r in out.iter_rows(named=True)}
    assert got == {(0, 5): [], (0, 7): [5], (0, 8): [5, 7], (1, 5): []}


def test_history_is_truncated_to_most_recent() -> None:
    examples = pl.LazyFrame({"user_idx": [0], "timestamp": [100]})
    out = with_point_in_time_history(examples, events(), max_len=2).collect()
    assert out["history"].to_list() == [[7, 8]]
    assert latest_history(events(), 2).collect().sort("user_idx")["history"].to_list() == [[7, 8], [5]]
