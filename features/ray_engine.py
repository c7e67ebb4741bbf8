"""Out-of-core preparation on a Ray cluster: each user bucket is one Ray task.

Why Ray: the bucket design is already a set of independent, picklable jobs (a
:class:`~rankforge.features.out_of_core.SplitJob`, then a
:class:`~rankforge.features.out_of_core.BucketJob`, over each bucket folder) whose outputs are
small frames; Ray runs exactly that -- Python functions as tasks, on a laptop or a cluster, with task
retries built in -- without rewriting the Polars steps for another engine's dataframe API (Spark,
Dask), so the engine's shards are the single-process path's by construction, which a test checks.

Policy:

* each pass's job (config, cuts, id mapping) is put in the object store once; every bucket is a task
  with ``num_cpus = 1``, so a cluster runs as many buckets at once as it has CPUs;
* a task that fails -- its worker dies, or it raises ``OSError`` (a storage hiccup) -- is retried
  ``max_retries`` times; a bucket writes only its own ``part-{b}`` files, which a retry overwrites;
  any other error (bad data) is not retried and fails the whole preparation, whose temporary
  folder is then removed (nothing half-written, as in the single-process path);
* the bucket folders and the output live on storage every worker reads and writes (one machine's
  disk for a local cluster, a shared file system for several machines);
* ``address=None`` starts a local cluster of ``workers`` CPUs for the run and stops it after;
  an address (``ray://host:10001``, ``host:6379`` or ``auto``) joins a running cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rankforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)
R = TypeVar("R")


def _run_bucket(job: Callable[[int, Path], R], b: int, folder: str) -> R:
    return job(b, Path(folder))


class RayEngine:
    """Prepares the buckets as Ray tasks (see the module docstring)."""

    def __init__(self, address: str | None = None, workers: int = 2, max_retries: int = 2) -> None:
        if workers < 1 or max_retries < 0:
            raise ConfigError(f"workers must be >= 1 and retries >= 0, got {workers} and {max_retries}")
        self.address = address
        self.workers = workers
        self.max_retries = max_retries

    def run(self, job: Callable[[int, Path], R], buckets: list[Path]) -> list[R]:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            try:
                if self.address is None:
                    ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local cluster"
                raise ConfigError(f"cannot start or join Ray at {where}: {str(exc)[:160]}") from exc
        try:
            task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=[OSError])(
                _run_bucket
            )
            shared = ray.put(job)
            refs = [task.remote(shared, b, str(folder)) for b, folder in enumerate(buckets)]
            log.info(
                "prepare: %d %s task(s) on Ray (%s)", len(refs), type(job).__name__, self.address or "local"
            )
            try:
                return list(ray.get(refs))
            except ray.exceptions.RayTaskError as exc:  # the bucket's own error, not Ray's wrapper
                cause = exc.cause
                raise (cause if isinstance(cause, Exception) else exc) from None
            except ray.exceptions.RayError as exc:  # Ray's own: a worker or node died, beyond retries
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DataError(
                    f"a Ray task of {type(job).__name__} failed after {self.max_retries} retries "
                    f"({type(exc).__name__}: {first[:160]}); nothing was written"
                ) from None
        finally:
            if started_here:
                ray.shutdown()
