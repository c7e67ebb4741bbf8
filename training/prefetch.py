"""Batches built on a second thread while the current one trains.

A retrieval batch with per-example negatives costs real work before the model sees it (sampling
``B x N`` negatives, one sort for the score pattern, the KJTs): about a quarter of a step on one
core. Torch releases the GIL in its kernels, so a producer thread building the next batches
overlaps that work with the training step when a job has two cores; with one, it costs nothing.

Determinism is kept: the producer is the only consumer of the batch sampler's generator and draws
batches in the same order as a plain loop, and an epoch's iterator ends before the trainer
checkpoints the generator's state.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` with up to ``depth`` of them produced ahead on a background thread; an
    exception raised while producing is raised here, at the item where it happened."""
    if depth < 1:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put ``item`` unless the consumer has gone; False if it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
