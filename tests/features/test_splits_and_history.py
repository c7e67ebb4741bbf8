import numpy as np
import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.event_order import tie_key
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


MASK = (1 << 64) - 1


def splitmix64_tie(user: int, item: int, seed: int = 0) -> int:
    """SplitMix64 (Steele et al., OOPSLA 2014) over (user, item), transcribed from its definition:
    x = mix(mix(user + golden * (seed + 1)) xor item), mix the 64-bit finaliser."""

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    return mix(mix(((user & MASK) + 0x9E3779B97F4A7C15 * (seed + 1)) & MASK) ^ (item & MASK))


def test_tie_key_is_splitmix64_of_the_raw_ids() -> None:
    pairs = [(1, 3), (-5, 4), (2**62, -1), (7, 2**63 - 1), (0, 0)]
    frame = pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]})
    for seed in (0, 3):
        got = frame.select(tie_key(seed=seed)).to_series().to_list()
        assert got == [splitmix64_tie(u, i, seed) for u, i in pairs]
    # streaming and in-memory engines agree (out-of-core buckets are sorted by it)
    lazy = frame.lazy().select(tie_key()).collect(engine="streaming").to_series().to_list()
    assert lazy == [splitmix64_tie(u, i) for u, i in pairs]


def test_leave_last_out_breaks_ties_on_time_by_the_tie_key_not_by_row_or_id() -> None:
    # user 1's last three events share a time: the one with the largest tie key is "last",
    # whichever row comes first and whatever the ids' order
    items = [12, 11, 10, 13]
    rows = {"user_id": [1, 1, 1, 1], "item_id": items, "timestamp": [5, 5, 5, 1]}
    by_key = sorted(items[:3], key=lambda i: splitmix64_tie(1, i))
    for order in ([0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]):
        frame = pl.LazyFrame({k: [v[i] for i in order] for k, v in rows.items()})
        train, test = leave_last_out(frame, n_last=1)
        assert test.collect()["item_id"].to_list() == [by_key[-1]]
        # the parts come out in event order, which ``ordered=True`` expects
        assert train.collect()["item_id"].to_list() == [13, *by_key[:2]]
        _, again = leave_last_out(train, n_last=1, ordered=True)
        assert again.collect()["item_id"].to_list() == [by_key[1]]


def _tied_log(seed: int = 0) -> pl.DataFrame:
    """Users who rate many items in the same second, item ids numbered by popularity (id 0 the
    most popular), as catalogues often are."""
    rng = np.random.default_rng(seed)
    n_users, n_items, per_user = 400, 300, 12
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate(
        [
            rng.choice(n_items, per_user, replace=False, p=popularity / popularity.sum())
            for _ in range(n_users)
        ]
    )
    times = rng.integers(0, 3, users.size)  # three sessions a user: ties everywhere
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times})


def _held_out(log: pl.DataFrame) -> pl.DataFrame:
    _, test = leave_last_out(log.lazy(), n_last=1)
    return test.collect().select("user_id", "item_id", "timestamp").sort("user_id")


def test_relabelled_items_hold_out_unbiased_events() -> None:
    log = _tied_log()
    events = log.join(log.group_by("item_id").len("events"), on="item_id")
    # a uniform pick among each user's last-time events: its mean popularity and standard error
    last = events.filter(pl.col("timestamp") == pl.col("timestamp").max().over("user_id"))
    per_user = last.group_by("user_id").agg(
        pl.col("events").mean().alias("mean"), pl.col("events").var(ddof=0).fill_null(0).alias("var")
    )
    expected = per_user["mean"].mean()
    se = float(np.sqrt(per_user["var"].sum())) / per_user.height

    def mean_popularity(held: pl.DataFrame) -> float:
        counts = events.unique(["item_id"]).select("item_id", "events")
        return held.join(counts, on="item_id")["events"].mean()

    baseline = _held_out(log)
    assert _held_out(log.sample(fraction=1.0, shuffle=True, seed=5)).equals(baseline)  # row order
    rng = np.random.default_rng(1)
    for _ in range(8):
        perm = rng.permutation(300)
        relabelled = log.with_columns(pl.col("item_id").replace_strict(range(300), perm.tolist()))
        held = _held_out(relabelled).with_columns(
            pl.col("item_id").replace_strict(perm.tolist(), list(range(300)))  # back to raw ids
        )
        # the same users at the same last time, each holding out one of its own last-time events
        assert held.select("user_id", "timestamp").equals(baseline.select("user_id", "timestamp"))
        assert held.join(last, on=["user_id", "item_id", "timestamp"]).height == held.height
        # and as popular as a uniform pick among them, whatever the labels (4 standard errors)
        assert abs(mean_popularity(held) - expected) < 4 * se
    assert abs(mean_popularity(baseline) - expected) < 4 * se
    # ... where breaking ties by item id holds out the least popular (largest) id of every tie
    by_id = log.sort("user_id", "timestamp", "item_id").group_by("user_id").last()
    assert mean_popularity(by_id) < expected - 8 * se


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
            "user_id": [100, 100, 100, 100, 101],  # the raw ids the event order's tie key reads
            "item_id": [50, 60, 70, 80, 50],
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
