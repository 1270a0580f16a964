"""What probation looks at: live error rate and latency per model version, and shadow agreement.

``observe`` runs in request threads and only appends to bounded deques. The shadow worker runs the
*previous* model on a sample of the new version's live requests, in its own thread, and compares
the answers — so a model that is fast and error-free but wrong is caught too.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeml.arrays import Array
from edgeml.inference import Model
from edgeml_agent.registry import Observation

log = logging.getLogger("edgeml_agent.updates")

ShadowHook = Callable[[Observation, Mapping[str, Array]], None]


@dataclass(frozen=True)
class VersionHealth:
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, float | None]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 4),
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


class HealthWatch:
    def __init__(self, window: int = 2000) -> None:
        self._samples: dict[tuple[str, str], collections.deque[tuple[float, float, bool]]] = {}
        self._window = window
        self.shadow: Shadow | None = None
        # called (in the shadow thread) with the request and the previous model's outputs when they disagree:
        # the capture component keeps those samples
        self.on_shadow_disagreement: list[ShadowHook] = []

    def shadow_disagreed(self, obs: Observation, reference: Mapping[str, Array]) -> None:
        for hook in list(self.on_shadow_disagreement):
            try:
                hook(obs, reference)
            except Exception:   # a listener's bug must not stop the comparison
                log.exception("shadow-disagreement hook %r failed", hook)

    def observe(self, obs: Observation) -> None:
        key = (obs.model, obs.version)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples.setdefault(key, collections.deque(maxlen=self._window))
        failed = obs.status >= 500 or (obs.error is not None and obs.status >= 500)
        samples.append((time.monotonic(), obs.seconds * 1000.0, failed))
        shadow = self.shadow
        if shadow is not None and not failed and obs.inputs is not None and obs.outputs is not None:
            shadow.offer(obs)

    def health(self, model: str, version: str, since: float | None = None) -> VersionHealth:
        samples = [s for s in list(self._samples.get((model, version), ())) if since is None or s[0] >= since]
        if not samples:
            return VersionHealth(0, 0, None, None)
        ok_latencies = np.array([ms for _, ms, failed in samples if not failed])
        errors = sum(1 for *_, failed in samples if failed)
        p50 = float(np.percentile(ok_latencies, 50)) if ok_latencies.size else None
        p95 = float(np.percentile(ok_latencies, 95)) if ok_latencies.size else None
        return VersionHealth(len(samples), errors, p50, p95)


class Shadow:
    """Runs ``reference`` (the previous model) on a sample of ``candidate_version``'s requests.

    Request threads only hand a sampled request to a bounded queue; the previous model runs in the
    shadow's own thread. When that thread falls behind (a slow reference model, a saturated CPU), the
    queue fills and further samples are dropped and counted, never waited for: a live answer never
    waits on the shadow model. What it can still take from live requests is CPU, on a saturated device:
    so the previous model runs at most ``DUTY`` of the wall time (after a run of t seconds, the shadow
    rests t * (1/DUTY - 1)); at low load that never binds, at full load it caps the comparisons, which
    only need to be a fair sample (``scripts/bench_shadow.py`` measures the cost at full load)."""

    QUEUE_SIZE = 64
    DUTY = 0.1

    def __init__(self, reference: Model, model: str, candidate_version: str, fraction: float,
                 on_disagree: ShadowHook | None = None) -> None:
        self.reference = reference
        self.on_disagree = on_disagree
        self.model = model
        self.candidate_version = candidate_version
        self.fraction = fraction
        self.compared = 0
        self.agreed = 0
        self.dropped = 0   # samples not compared because the queue was full
        self._dropping = threading.Lock()   # request threads count drops concurrently
        self._queue: queue.Queue[Observation] = queue.Queue(maxsize=self.QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeml-shadow", daemon=True)
        self._thread.start()

    def offer(self, obs: Observation) -> None:
        if obs.model != self.model or obs.version != self.candidate_version or random.random() >= self.fraction:
            return
        try:
            self._queue.put_nowait(obs)
        except queue.Full:   # shadowing is a sample; never slow the live path down
            with self._dropping:
                self.dropped += 1

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                obs = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            started = time.perf_counter()
            try:
                expected = self.reference.predict(dict(obs.inputs or {}))
            except Exception:
                log.debug("shadow run of the previous model failed", exc_info=True)
                continue
            ran_s = time.perf_counter() - started
            self.compared += 1
            agreed = outputs_agree(expected, obs.outputs)
            self.agreed += int(agreed)
            if not agreed and self.on_disagree is not None:
                self.on_disagree(obs, expected)
            self._stop.wait(ran_s * (1 / self.DUTY - 1))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        log.info("shadow of %s@%s: %d compared, %d agreed, %d dropped (queue full)", self.model,
                 self.candidate_version, self.compared, self.agreed, self.dropped)


def outputs_agree(reference: Mapping[str, Array], candidate: Mapping[str, Array] | None) -> bool:
    """Same top-1 class for score-like outputs, cosine >= 0.99 for everything else."""
    for name, ref in reference.items():
        cand = candidate.get(name) if candidate is not None else None
        if cand is None or np.shape(cand) != np.shape(ref):
            return False
        r, c = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
        if r.ndim == 2 and r.shape[1] > 1:
            if not np.array_equal(r.argmax(1), c.argmax(1)):
                return False
            continue
        denom = float(np.linalg.norm(r) * np.linalg.norm(c))
        cosine = float(np.dot(r.ravel(), c.ravel()) / denom) if denom else float(np.allclose(r, c))
        if cosine < 0.99:
            return False
    return True
