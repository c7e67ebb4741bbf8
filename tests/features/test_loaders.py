from pathlib import Path

import polars as pl
import pytest

from rankforge.errors import DataError
from rankforge.features.loaders import (
    load_interactions,
    load_lightgcn_split,
    load_movielens_items,
    scan_interactions,
)
from rankforge.features.schema import INTERACTION_SCHEMA


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_movielens_csv(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,100\n2,10,3.0,200\n")
    df = load_interactions(p)
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert df.rows() == [(1, 10, 4.5, 100), (2, 10, 3.0, 200)]


def test_movielens_dat_multibyte_separator(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n\n")
    assert load_interactions(p).rows() == [(1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109)]


def test_movielens_100k_tab(tmp_path: Path) -> None:
    p = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert load_interactions(p)["item_id"].to_list() == [242, 302]


def test_lightgcn_lists_keep_order_as_time(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 5 7 9\n1 3\n")
    write(tmp_path / "test.txt", "0 11\n1 4 2\n")
    train, test = load_lightgcn_split(tmp_path)
    assert train.select("user_id", "item_id", "timestamp").rows() == [
        (0, 5, 0),
        (0, 7, 1),
        (0, 9, 2),
        (1, 3, 0),
    ]
    assert train["rating"].null_count() == train.height
    assert test.height == 3


def test_parquet_log_requires_id_columns(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pl.DataFrame({"user": [1], "item_id": [2]}).write_parquet(p)
    with pytest.raises(DataError, match=r"missing column\(s\) \['user_id'\]"):
        scan_interactions(p)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*ratings\.csv"):
        load_interactions(tmp_path / "ratings.csv")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_interactions(write(tmp_path / "ratings.dat", ""))


def test_header_only_csv_has_no_interactions(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no interactions"):
        load_interactions(write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"))


def test_wrong_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.csv", "user,movie,stars,time\n1,2,3,4\n")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['userId', 'movieId', 'rating', 'timestamp'\]"
    ):
        load_interactions(p)


def test_wrong_field_count(tmp_path: Path) -> None:
    p = write(tmp_path / "ratings.dat", "1::2::3\n")
    with pytest.raises(DataError, match="expected 4 fields"):
        load_interactions(p)


def test_unparsable_value(tmp_path: Path) -> None:
    p = write(tmp_path / "u.data", "1\tabc\t3\t4\n")
    with pytest.raises(DataError, match="cannot parse"):
        load_interactions(p)


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell the layout"):
        scan_interactions(write(tmp_path / "log.json", "{}"))


def test_movies_genres(tmp_path: Path) -> None:
    p = write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n2,X,(no genres listed)\n',
    )
    items = load_movielens_items(p)
    assert items.rows() == [(1, ["Adventure", "Animation"]), (2, [])]


@pytest.mark.movielens
def test_real_movielens_latest_small(movielens_dir: Path) -> None:
    df = load_interactions(movielens_dir / "ratings.csv")
    assert df.height == 100_836
    assert df["user_id"].n_unique() == 610
    assert df["rating"].min() == 0.5 and df["rating"].max() == 5.0
