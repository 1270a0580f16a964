"""Micro-batching: requests for one model that arrive within ``max_wait`` are run as one batch.

One worker thread per batched model takes the first waiting request, whatever else is already queued,
and waits at most ``max_wait`` for more, up to ``max_batch_size`` rows. Requests whose non-batch shapes
or dtypes differ cannot share a batch: they run in separate groups. Each caller blocks on its own future
and gets exactly its rows back; a failed batch fails every request in it with the same error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import ConfigError

RunFn = Callable[[Mapping[str, Array]], dict[str, Array]]
_Item = tuple[Mapping[str, Array], "Future[dict[str, Array]]"]


def has_batch_dim(specs: list[TensorSpec]) -> bool:
    return all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def check_batchable(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    if not (has_batch_dim(inputs) and has_batch_dim(outputs)):
        raise ConfigError(
            f"model '{name}' has no dynamic batch dimension on every input and output "
            f"(first dims: {[s.shape[:1] for s in inputs + outputs]}); remove models.{name}.max_batch_size "
            "or build the bundle with a dynamic batch dimension"
        )


class MicroBatcher:
    def __init__(self, run: RunFn, max_batch_size: int, max_wait_s: float, name: str = "model") -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batches = 0          # observability: how many runs, how many rows
        self.rows = 0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()   # None: stop
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run ``feeds`` (checked, with a leading batch dim) as part of a batch; blocks until done."""
        fut: Future[dict[str, Array]] = Future()
        self._queue.put((feeds, fut))
        return fut.result()

    def close(self) -> None:
        """Finish every request already submitted, then stop the worker."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_Item] = [first]
            rows = _rows(first[0])
            stop = False
            deadline = time.monotonic() + self.max_wait_s
            while rows < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                rows += _rows(item[0])
            for group in _groups(batch):
                self._run_group(group)
            if stop:
                return

    def _run_group(self, group: list[_Item]) -> None:
        try:
            if len(group) == 1:
                feeds, fut = group[0]
                result = self.run(feeds)
                self.batches, self.rows = self.batches + 1, self.rows + _rows(feeds)
                fut.set_result(result)
                return
            names = list(group[0][0])
            sizes = [_rows(f) for f, _ in group]
            joined = {n: np.concatenate([f[n] for f, _ in group], axis=0) for n in names}
            out = self.run(joined)
            self.batches, self.rows = self.batches + 1, self.rows + sum(sizes)
            total = sum(sizes)
            for name, arr in out.items():
                if arr.shape[:1] != (total,):
                    raise RuntimeError(f"output '{name}' has {arr.shape[:1]} rows for a batch of {total}")
            offsets = np.cumsum([0, *sizes])
            for i, (_, fut) in enumerate(group):
                fut.set_result({n: a[offsets[i]:offsets[i + 1]] for n, a in out.items()})
        except BaseException as exc:  # every waiting caller must hear about the failure
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)


def _rows(feeds: Mapping[str, Array]) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 1


def _groups(batch: list[_Item]) -> list[list[_Item]]:
    groups: dict[tuple[tuple[str, tuple[int, ...], str], ...], list[_Item]] = {}
    for item in batch:
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(item[0].items()))
        groups.setdefault(key, []).append(item)
    return list(groups.values())
