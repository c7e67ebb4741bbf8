"""Out-of-core preparation on Ray: a local cluster on loopback, started by the test, writes the
single-process path's shards; a bucket that fails with a storage error is retried; a bucket that
fails on its data fails the run with nothing written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import polars as pl
import pytest
import ray
from ray import cloudpickle

from rankforge.cli import main
from rankforge.errors import DataError
from rankforge.features.out_of_core import BucketJob, BucketResult, InProcess, prepare_to_disk
from rankforge.features.pipeline import DataConfig
from rankforge.features.ray_engine import RayEngine
from rankforge.features.synthetic import generate_log

# the test's job classes travel to the workers by value (the workers cannot import this file)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster() -> object:
    """One local Ray cluster (2 CPUs, loopback) for the module; the engine joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def log_config(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    folder = tmp_path_factory.mktemp("ray")
    generate_log(120, 150, seed=4).interactions.write_parquet(folder / "log.parquet")
    return DataConfig(
        source="file", path=folder / "log.parquet", split="leave_last_out", validation_fraction=0.1
    )


def _files(folder: Path) -> dict[str, pl.DataFrame | dict]:
    out: dict[str, pl.DataFrame | dict] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".parquet":
            out[str(path.relative_to(folder))] = pl.read_parquet(path)
    return out


def _same_output(a: Path, b: Path) -> None:
    mine, theirs = _files(a), _files(b)
    assert mine.keys() == theirs.keys() and len(mine) > 4
    for name in mine:
        assert mine[name].equals(theirs[name]), name
    meta_a, meta_b = (
        pl.read_json(d / "prepared.json").drop("phase_seconds", "bucket_peak_gb") for d in (a, b)
    )
    assert meta_a.equals(meta_b)


@pytest.mark.slow
def test_ray_writes_the_single_process_shards(
    cluster: object, log_config: DataConfig, tmp_path: Path
) -> None:
    local = prepare_to_disk(log_config, tmp_path / "local", events_per_bucket=1_000, engine=InProcess())
    on_ray = prepare_to_disk(log_config, tmp_path / "ray", events_per_bucket=1_000, engine=RayEngine())
    assert len(list((on_ray / "ranking_examples").iterdir())) > 1  # several buckets, several tasks
    _same_output(local, on_ray)


class FlakyOnce(BucketJob):
    """Bucket 1 fails once with a storage error (a marker file says it already did)."""

    def __call__(self, b: int, folder: Path) -> BucketResult:
        marker = self.tmp.parent / f"failed-{self.tmp.name}"
        if b == 1 and not marker.exists():
            marker.write_text("once")
            raise OSError("the storage blinked")
        return super().__call__(b, folder)


class BadData(BucketJob):
    def __call__(self, b: int, folder: Path) -> BucketResult:
        if b == 2:
            raise DataError(f"bucket {b}: a row no log should hold")
        return super().__call__(b, folder)


class KilledWorker(BucketJob):
    """Bucket 1's worker process dies (as under SIGKILL or the OOM killer)."""

    def __call__(self, b: int, folder: Path) -> BucketResult:
        if b == 1:
            os._exit(9)
        return super().__call__(b, folder)


class _Wrapping(RayEngine):
    """The Ray engine running ``kind``'s bucket job instead of the plain one (the split pass
    runs as it is)."""

    def __init__(self, kind: type[BucketJob], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.kind = kind

    def run(self, job, buckets):  # type: ignore[no-untyped-def]
        if isinstance(job, BucketJob):
            job = self.kind(job.config, job.known, job.tmp)
        return super().run(job, buckets)


@pytest.mark.slow
def test_a_failed_bucket_is_retried(cluster: object, log_config: DataConfig, tmp_path: Path) -> None:
    local = prepare_to_disk(log_config, tmp_path / "local", events_per_bucket=1_000)
    flaky = prepare_to_disk(
        log_config, tmp_path / "flaky", events_per_bucket=1_000, engine=_Wrapping(FlakyOnce)
    )
    assert any(p.name.startswith("failed-") for p in tmp_path.iterdir())  # it did fail once
    _same_output(local, flaky)


@pytest.mark.slow
def test_bad_data_fails_the_run_and_leaves_nothing(
    cluster: object, log_config: DataConfig, tmp_path: Path
) -> None:
    engine = _Wrapping(BadData, max_retries=3)
    with pytest.raises(DataError, match=r"^bucket 2: a row no log should hold$"):
        prepare_to_disk(log_config, tmp_path / "out", events_per_bucket=1_000, engine=engine)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


@pytest.mark.slow
def test_a_worker_killed_beyond_its_retries_is_one_line_and_leaves_nothing(
    cluster: object, log_config: DataConfig, tmp_path: Path
) -> None:
    engine = _Wrapping(KilledWorker, max_retries=0)
    with pytest.raises(
        DataError, match=r"^a Ray task of KilledWorker failed after 0 retries \(Worker"
    ) as err:
        prepare_to_disk(log_config, tmp_path / "out", events_per_bucket=1_000, engine=engine)
    assert "\n" not in str(err.value) and "nothing was written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_prepare_cli_on_ray(cluster: object, log_config: DataConfig, tmp_path: Path, capsys) -> None:
    config = tmp_path / "data.toml"
    config.write_text(f'[data]\nsource = "file"\npath = "{log_config.path}"\nsplit = "random"\n')
    args = ["prepare", str(config), "--out", str(tmp_path / "p"), "--events-per-bucket", "1000"]
    assert main([*args, "--engine", "ray"]) == 0
    assert 'source = "prepared"' in capsys.readouterr().out
    assert main([*args, "--address", "auto"]) == 2
    assert "--address names a Ray cluster: use it with --engine ray" in capsys.readouterr().err
