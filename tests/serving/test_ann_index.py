"""ANN retrieval (FAISS HNSW / IVF, ScaNN): recall measured at export against exact search, refused or
warned below the threshold, and loaded by the serving runtime from the bundle's manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

from rankforge.bundles.ann_index import (
    INDEX_FILE,
    AnnIndex,
    IndexConfig,
    build,
    export_index,
    load_index,
    recall_at_k,
)
from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.candidate_index import ExactInnerProductIndex
from rankforge.bundles.runtime import load_retrieval
from rankforge.bundles.scann_index import SCANN_DIR, ScannIndex
from rankforge.errors import DataError
from rankforge.pipelines.train import run_training
from rankforge.training.config import parse_config


def clustered(n: int = 4000, d: int = 16, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Trained-like item vectors: tight clusters, not uniform noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    return (centers[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize(
    "kind, codes", [("hnsw", "flat"), ("ivf", "flat"), ("ivf", "sq8"), ("scann", "flat")]
)
def test_indexes_find_the_exact_neighbours(kind: str, codes: str) -> None:
    vectors = clustered()
    config = IndexConfig(kind=kind, nprobe=16, ivf_codes=codes)
    index = build(vectors, config)
    assert recall_at_k(index, vectors, 50, 200) >= 0.95
    served = AnnIndex(index, ExactInnerProductIndex(vectors))
    queries = vectors[:20] + 0.01
    ids, scores = served.search(queries, 10)
    exact_ids, exact_scores = ExactInnerProductIndex(vectors).search(queries, 10)
    assert (ids[:, 0] == exact_ids[:, 0]).mean() >= 0.95
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_sq8_cells_rescore_their_candidates_exactly(tmp_path: Path) -> None:
    """8-bit codes pick the candidates, the exact vectors score them: the answer's scores are the
    exact inner products, and every cell scanned finds what the flat index finds."""
    vectors = clustered(seed=2)
    config = IndexConfig(kind="ivf", ivf_lists=40, nprobe=40, ivf_codes="sq8", refine_factor=2.5)
    record = export_index(vectors, config, tmp_path)
    assert record["codes"] == "sq8" and record["refine_factor"] == 2.5 and record["recall_at_100"] >= 0.99
    served = load_index(tmp_path, vectors, record)
    assert isinstance(served, AnnIndex)
    assert faiss.downcast_index(served.index).k_factor == 2.5  # the manifest's factor, set at load
    queries = vectors[:16] + 0.01
    ids, scores = served.search(queries, 20)
    expected = np.einsum("qd,qkd->qk", queries.astype(np.float32), vectors[ids])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    flat = AnnIndex(build(vectors, config.model_copy(update={"ivf_codes": "flat"})), served.exact)
    assert (ids == flat.search(queries, 20)[0]).mean() >= 0.95


def test_scann_rescores_its_candidates_exactly_and_loads_as_recorded(tmp_path: Path) -> None:
    """ScaNN's 4-bit codes pick ``scann_reorder`` candidates, the float vectors score them: the
    answer's scores are the exact inner products, in order; the manifest's leaves, leaves
    searched and re-scored count are what the loaded searcher uses."""
    vectors = clustered(seed=4)
    config = IndexConfig(kind="scann", scann_leaves=50, nprobe=20, scann_reorder=300)
    record = export_index(vectors, config, tmp_path)
    assert record["file"] == SCANN_DIR and (tmp_path / SCANN_DIR).is_dir()
    assert (record["lists"], record["nprobe"], record["reorder"]) == (50, 20, 300)
    assert record["recall_at_100"] >= 0.95
    served = load_index(tmp_path, vectors, record)
    assert isinstance(served, AnnIndex) and isinstance(served.index, ScannIndex)
    assert (served.index.leaves, served.index.leaves_to_search, served.index.reorder) == (50, 20, 300)
    queries = vectors[:16] + 0.01
    ids, scores = served.search(queries, 20)
    expected = np.einsum("qd,qkd->qk", queries.astype(np.float32), vectors[ids])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    exact_ids = ExactInnerProductIndex(vectors).search(queries, 20)[0]
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(ids, exact_ids, strict=True)]) >= 19
    one_ids, _ = served.search(queries[0], 20)  # one query: the unbatched call, same answer
    np.testing.assert_array_equal(one_ids[0], ids[0])


def test_the_scann_kind_without_its_package_fails_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``scann`` has no wheel, the config says so before any training is spent."""
    from pydantic import ValidationError

    import rankforge.bundles.ann_index as ann_index

    monkeypatch.setattr(ann_index, "scann_available", lambda: False)
    with pytest.raises(ValidationError, match="kind 'scann' needs the scann package"):
        IndexConfig(kind="scann")
    assert IndexConfig(kind="ivf").kind == "ivf"


def test_a_scann_index_moved_elsewhere_loads_from_where_it_lies(tmp_path: Path) -> None:
    """A bundle travels (registry download, another machine): nothing in its ScaNN directory may
    point back at where it was built."""
    import shutil

    vectors = clustered(n=2000, seed=7)
    config = IndexConfig(kind="scann", scann_leaves=20, nprobe=10, scann_reorder=200)
    built = tmp_path / "built"
    record = export_index(vectors, config, built)
    queries = vectors[:10] + 0.01
    before = load_index(built, vectors, record).search(queries, 20)
    assert str(built) not in (built / SCANN_DIR / "scann_assets.pbtxt").read_text()
    shutil.copytree(built, tmp_path / "moved")
    shutil.rmtree(built)
    after = load_index(tmp_path / "moved", vectors, record).search(queries, 20)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1])


def test_scann_answers_concurrent_searches_as_it_answers_one_at_a_time() -> None:
    """The server searches one index from many request threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    vectors = clustered(n=3000, seed=6)
    index = build(vectors, IndexConfig(kind="scann", scann_leaves=30, nprobe=10, scann_reorder=200))
    queries = vectors[:200] + 0.01
    alone = [index.search(q[None, :], 50)[1] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: index.search(q[None, :], 50)[1], queries))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("shuffled rows", "does not match the bundle's item vectors"),
        ("other dimension", "does not take 16-dimensional queries"),
        ("missing", "is not a directory inside the bundle"),
        ("reorder 0", r"reorder must be an integer in \[1, 1048576\], got '0'"),
        ("nprobe 2**31", r"nprobe must be an integer in \[1, 1048576\], got '2147483648'"),
        ("not scann", "cannot read the ScaNN index"),
        ("tokens out of range", "cannot read the ScaNN index .*: IndexError"),
        ("empty partitioner", "cannot read the ScaNN index .*: IndexError"),
        ("no recall record", "has no recall_at_K measured at export"),
        ("asset outside", "names '/etc/hostname', not a file of the index directory"),
    ],
)
def test_a_scann_index_that_does_not_fit_the_vectors_is_refused(
    tmp_path: Path, damage: str, message: str
) -> None:
    vectors = clustered(n=2000, seed=5)
    config = IndexConfig(kind="scann", scann_leaves=20, nprobe=10, scann_reorder=200)
    record = export_index(vectors, config, tmp_path)
    load_index(tmp_path, vectors, record)  # intact: loads
    other = tmp_path / "other"
    if damage == "shuffled rows":
        export_index(vectors[np.random.default_rng(0).permutation(len(vectors))], config, other)
    elif damage == "other dimension":
        export_index(clustered(n=2000, d=8, seed=5), config, other)
    elif damage == "not scann":
        (other / SCANN_DIR).mkdir(parents=True)
        (other / SCANN_DIR / "scann_config.pb").write_bytes(b"not a config")
    if damage in ("shuffled rows", "other dimension", "not scann"):
        record = {**record, "file": f"other/{SCANN_DIR}"}
    elif damage == "missing":
        record = {**record, "file": "nowhere"}
    elif damage == "tokens out of range":
        tokens = tmp_path / SCANN_DIR / "datapoint_to_token.npy"
        np.save(tokens, np.full_like(np.load(tokens), 10**6))
    elif damage == "empty partitioner":
        (tmp_path / SCANN_DIR / "serialized_partitioner.pb").write_bytes(b"")
    elif damage == "nprobe 2**31":
        record = {**record, "nprobe": 2**31}
    elif damage == "no recall record":  # the load-time recall check would be skipped
        record = {k: v for k, v in record.items() if not k.startswith("recall_at_")}
    elif damage == "asset outside":  # the searcher's own file record pointing out of the bundle
        assets = tmp_path / SCANN_DIR / "scann_assets.pbtxt"
        text = assets.read_text()
        assert '"ah_codebook.pb"' in text  # saved by bare names
        assets.write_text(text.replace('"ah_codebook.pb"', '"/etc/hostname"'))
    else:
        record = {**record, "reorder": 0}
    with pytest.raises(DataError, match=message):
        load_index(tmp_path, vectors, record)


def test_low_recall_is_refused_or_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vectors = clustered(seed=1)
    poor = IndexConfig(kind="ivf", ivf_lists=100, nprobe=1, min_recall=0.999)
    with pytest.raises(
        DataError,
        match=r"ivf index recall@100 0\.\d+ is below serving_index\.min_recall 0\.999 \(raise nprobe,",
    ):
        export_index(vectors, poor, tmp_path)
    assert not (tmp_path / INDEX_FILE).exists()
    with caplog.at_level(logging.WARNING):
        record = export_index(vectors, poor.model_copy(update={"on_low_recall": "warn"}), tmp_path)
    assert (tmp_path / INDEX_FILE).is_file() and record["recall_at_100"] < 0.999
    assert any("below serving_index.min_recall" in r.getMessage() for r in caplog.records)


def test_a_retrieval_job_exports_an_hnsw_index_the_server_loads(rankforge_home: Path, tmp_path: Path) -> None:
    config = parse_config(
        {
            "output_dir": str(tmp_path / "job"),
            "data": {"synthetic": {"n_users": 60, "n_items": 300, "seed": 3}},
            "model": {"kind": "retrieval", "embedding_dim": 8, "tower_sizes": [16, 8]},
            "objective": {"name": "ccl"},
            "training": {"epochs": 1, "batch_size": 128},
            "negatives": {"count": 8},
            "serving_index": {"kind": "hnsw", "recall_k": 20},
            "mlflow": {"register_model": False, "experiment": "ann-test"},
        }
    )
    bundle = load_bundle(run_training(config).bundle_dir)
    assert bundle.manifest.index["kind"] == "hnsw" and bundle.manifest.index["recall_at_20"] >= 0.95
    # the served answer's quality, beside the index's: Recall@20 through the index vs exact search
    served = bundle.manifest.index["served_recall"]
    assert served["split"] == "test" and served["k"] == 20  # the job has no validation split
    assert 0 < served["ann"] <= served["exact"] + 1e-9 and served["loss"] <= served["max_loss"] == 0.01
    assert (bundle.directory / INDEX_FILE).is_file()
    runtime = load_retrieval(bundle, "v1")
    assert isinstance(runtime.index, AnnIndex)
    items, scores = runtime.retrieve(
        runtime.user_vector(0, np.array([1, 2])), np.array([], dtype=np.int64), 10
    )
    assert len(items) == 10 and np.all(np.diff(scores) <= 1e-6)


@pytest.mark.parametrize("kind, knob", [("ivf", "nprobe"), ("hnsw", "ef_search"), ("scann", "nprobe")])
def test_tuned_search_takes_the_cheapest_setting_that_reaches_min_recall(
    tmp_path: Path, kind: str, knob: str
) -> None:
    vectors = clustered(n=6000, d=32, clusters=400, seed=3)
    config = IndexConfig(
        kind=kind,
        ivf_lists=128,
        scann_leaves=128,
        nprobe=1,
        ef_search=1,
        hnsw_m=16,
        min_recall=0.97,
        tune_search=True,
    )
    record = export_index(vectors, config, tmp_path)
    tried = record["tuned"]
    settings = [value for value, _ in tried]
    # doubling from 16 up to the first setting that passes, then two halvings below it
    first_pass = next(i for i, (_, r) in enumerate(tried) if r >= 0.97)
    assert first_pass >= 1  # the test's index is one the cheapest setting does not satisfy
    assert settings[: first_pass + 1] == [16 * 2**i for i in range(first_pass + 1)]
    low, high = settings[first_pass - 1], settings[first_pass]
    bisections = settings[first_pass + 1 :]
    assert len(bisections) == 2 and bisections[0] == (low + high) // 2
    assert all(low < v < high for v in bisections)
    chosen = min(v for v, r in tried if r >= 0.97)
    assert all(r < 0.97 for v, r in tried if v < chosen)  # nothing cheaper tried passed
    assert chosen - max(v for v, r in tried if v < chosen) <= (high - low) // 4 + 1
    assert record[knob] == chosen and record["recall_at_100"] == dict(tried)[chosen]
    # what the manifest records is what the loaded index searches with, at the recorded recall
    loaded = load_index(tmp_path, vectors, record)
    assert isinstance(loaded, AnnIndex)
    if isinstance(loaded.index, ScannIndex):
        searched = loaded.index.leaves_to_search
    else:
        searched = (
            loaded.index.hnsw.efSearch if kind == "hnsw" else faiss.extract_index_ivf(loaded.index).nprobe
        )
    assert searched == chosen
    assert recall_at_k(loaded.index, vectors, 100, 1000) == pytest.approx(dict(tried)[chosen], abs=1e-4)


def test_tuned_search_that_cannot_reach_min_recall_is_refused(tmp_path: Path) -> None:
    vectors = clustered(n=6000, d=32, seed=3)  # a graph of 4 links per node: recall 0.79 at most
    config = IndexConfig(kind="hnsw", hnsw_m=4, min_recall=0.97, recall_queries=200, tune_search=True)
    with pytest.raises(
        DataError, match=r"hnsw index recall@100 0\.[0-8]\d+ is below serving_index\.min_recall"
    ):
        export_index(vectors, config, tmp_path)
    assert not (tmp_path / INDEX_FILE).exists()
