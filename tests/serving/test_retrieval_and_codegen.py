"""Exact retrieval, raw-id lookups and the proto code generation, without a server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rankforge.bundles.candidate_index import CandidateIndex, ExactInnerProductIndex
from rankforge.bundles.id_lookup import IdLookup
from rankforge.bundles.runtime import _member, pad_row, pad_rows
from rankforge.errors import DataError
from rankforge.serving.proto import codegen


def test_exact_index_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    vectors, queries = rng.normal(size=(200, 8)), rng.normal(size=(3, 8))
    index = ExactInnerProductIndex(vectors)
    assert isinstance(index, CandidateIndex)
    ids, scores = index.search(queries, 10)
    full = queries.astype(np.float32) @ vectors.astype(np.float32).T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-6)
    all_ids, _ = index.search(queries[:1], 500)  # k beyond the catalogue: everything, ordered
    assert sorted(all_ids[0].tolist()) == list(range(200))
    np.testing.assert_allclose(index.scores(queries[0], np.array([5, 7])), full[0, [5, 7]], rtol=1e-6)
    with pytest.raises(DataError, match="dimension"):
        index.search(np.zeros((1, 3)), 5)


def test_id_lookup_encodes_unknown_ids_as_minus_one() -> None:
    lookup = IdLookup(pl.DataFrame({"item_id": [50, 10, 30], "item_idx": [2, 0, 1]}), "item_id", "item_idx")
    assert lookup.encode(np.array([30, 99, 50, 10, -4])).tolist() == [1, -1, 2, 0, -1]
    assert lookup.decode(np.array([2, 0])).tolist() == [50, 10]


def test_padding_matches_the_export_helpers() -> None:
    from rankforge.models.inputs import pad_lists

    lists = [[1, 2, 3, 4], [], [7]]
    np.testing.assert_array_equal(pad_rows([np.array(x) for x in lists], 3), pad_lists(lists, 3).numpy())
    assert pad_row(np.array([1, 2, 3, 4]), 3).tolist() == [2, 3, 4]


def test_codegen_writes_importable_modules_with_relative_imports(tmp_path: Path) -> None:
    root = tmp_path / "proto"
    for proto in codegen.PROTOS:
        (root / proto).parent.mkdir(parents=True)
        shutil.copy(codegen.ROOT / proto, root / proto)
    assert codegen.is_stale(root)
    written = codegen.generate(root)
    assert {p.name for p in written} == {"ranking_pb2.py", "ranking_pb2.pyi", "ranking_pb2_grpc.py"}
    stub = (root / "rankforge/v1/ranking_pb2_grpc.py").read_text()
    assert "from . import ranking_pb2 as" in stub and "from rankforge.v1 import" not in stub
    assert not codegen.is_stale(root)
    proto = root / codegen.PROTOS[0]
    newer = (root / "rankforge/v1/ranking_pb2.py").stat().st_mtime_ns + 1_000_000
    os.utime(proto, ns=(newer, newer))
    assert codegen.is_stale(root)
    assert codegen.ensure_generated(root) is True and codegen.ensure_generated(root) is False


def test_installed_modules_are_current() -> None:
    """The package's own generated modules exist and are not older than the .proto."""
    assert not codegen.is_stale()


@pytest.mark.parametrize("excluded", [0, 1, 20, 64, 65, 300])
def test_seen_item_membership_is_isin_at_every_size(excluded: int) -> None:
    rng = np.random.default_rng(excluded)
    values, small = rng.integers(0, 300, 220), rng.integers(0, 300, excluded)
    np.testing.assert_array_equal(_member(values, small), np.isin(values, small))
