"""Running a stateful model as a stream: state fed back between calls, long audio cut into frames.

A :class:`StreamState` is one stream's memory: the state tensors the next call takes (the manifest's
``state`` pairs, :mod:`edgeml.bundle.prepost`) and the audio samples that did not fill a frame yet.
:func:`run_stream` runs one call of a stream: inputs the caller left out are filled from that memory (the
``init`` value on the first call), the state outputs go back into it, and with ``audio_frames``
preprocessing a buffer of any length runs frame by frame. A caller that passes a state input itself
overrides the kept one for that call (the explicit form), and the stream continues from what it returns.

Used by :meth:`edgeml.inference.Model.stream` in-process and by the agent's per-client sessions, so both
compute exactly what a hand-written loop feeding ``state = outputs["stateN"]`` computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.bundle.prepost import AudioFraming, StatePair
from edgeml.errors import InferenceInputError

RunFn = Callable[[Mapping[str, Array]], dict[str, Array]]
MAX_FRAMES_PER_CALL = 4096        # a call is one request: a client streams long audio in several posts


@dataclass
class StreamResult:
    outputs: dict[str, Array]           # the model's outputs without the state outputs (the stream keeps them)
    frames: int | None = None           # None: one call, not framed; else frames run (outputs stacked on axis 0)
    pending: int = 0                    # samples kept for the next call (framing)
    last_feeds: dict[str, Array] = field(default_factory=dict)   # what the model saw last (for observers)


class StreamState:
    """One stream's memory. Not thread-safe: the owner serialises calls (the agent holds a lock per session)."""

    def __init__(self, pairs: Sequence[StatePair], inputs: Sequence[TensorSpec],
                 framing: AudioFraming | None = None) -> None:
        self.pairs = list(pairs)
        self.specs = {s.name: s for s in inputs}
        self.framing = framing
        self.values: dict[str, Array] = {}
        self.pending: Array | None = None
        self.calls = 0

    def reset(self) -> None:
        self.values.clear()
        self.pending = None
        self.calls = 0

    @property
    def state_outputs(self) -> frozenset[str]:
        return frozenset(p.output for p in self.pairs)

    def fill(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """``feeds`` plus every state input the caller left out (kept value, or the init value)."""
        out = dict(feeds)
        sizes = self._dim_sizes(feeds)
        for pair in self.pairs:
            if pair.input in out:
                continue
            spec = self.specs[pair.input]
            want = tuple(d if isinstance(d, int) and d >= 0 else sizes.get(str(d), 1) for d in spec.shape)
            kept = self.values.get(pair.input)
            if kept is None:
                out[pair.input] = np.zeros(want, dtype=np.dtype(spec.dtype))
            elif kept.shape != want:
                raise InferenceInputError(
                    f"the stream's state '{pair.input}' has shape {list(kept.shape)} but this call needs "
                    f"{list(want)} (another batch size?): reset the stream to start over with the new shape")
            else:
                out[pair.input] = kept
        return out

    def keep(self, outputs: Mapping[str, Array]) -> None:
        for pair in self.pairs:
            if pair.output in outputs:
                # a copy: the runtime may reuse its output buffers on the next call
                self.values[pair.input] = np.array(outputs[pair.output], copy=True)
        self.calls += 1

    def _dim_sizes(self, feeds: Mapping[str, Array]) -> dict[str, int]:
        """Sizes of named dynamic dimensions, read from the inputs the caller passed."""
        sizes: dict[str, int] = {}
        for name, arr in feeds.items():
            spec = self.specs.get(name)
            if spec is None or len(spec.shape) != np.ndim(arr):
                continue
            for dim, size in zip(spec.shape, np.shape(arr), strict=True):
                if isinstance(dim, str):
                    sizes.setdefault(dim, int(size))
        return sizes


def wants_framing(framing: AudioFraming | None, feeds: Mapping[str, Array]) -> bool:
    """Frame a call when the framed input holds anything but exactly one frame (a plain call stays plain)."""
    if framing is None or framing.input not in feeds:
        return False
    shape = np.shape(feeds[framing.input])
    return not shape or shape[-1] != framing.frame or (len(shape) == 1)


def run_stream(run: RunFn, check: RunFn, stream: StreamState, feeds: Mapping[str, Array]) -> StreamResult:
    """One call of ``stream``: ``check`` validates and converts feeds (raises InferenceInputError), ``run``
    runs checked feeds. Framed when :func:`wants_framing` says so."""
    if not wants_framing(stream.framing, feeds):
        checked = check(stream.fill(feeds))
        outputs = run(checked)
        stream.keep(outputs)
        return StreamResult(_without(outputs, stream.state_outputs), None, 0, checked)
    assert stream.framing is not None
    return _run_frames(run, check, stream, stream.framing, feeds)


def _run_frames(run: RunFn, check: RunFn, stream: StreamState, framing: AudioFraming,
                feeds: Mapping[str, Array]) -> StreamResult:
    samples = _samples(feeds[framing.input], framing)
    if stream.pending is not None and stream.pending.size:
        samples = np.concatenate([stream.pending.astype(samples.dtype, copy=False), samples])
    count = 0 if len(samples) < framing.frame else (len(samples) - framing.frame) // framing.hop + 1
    if count > MAX_FRAMES_PER_CALL:
        raise InferenceInputError(f"the audio holds {count} frames; at most {MAX_FRAMES_PER_CALL} are run in "
                                  "one call: send it in several calls of the same session")
    spec = stream.specs[framing.input]
    lead = (1,) * (len(spec.shape) - 1)
    results: list[dict[str, Array]] = []
    checked: dict[str, Array] = {}
    for i in range(count):
        frame = samples[i * framing.hop:i * framing.hop + framing.frame].reshape((*lead, framing.frame))
        checked = check(stream.fill({**feeds, framing.input: frame}))
        outputs = run(checked)
        stream.keep(outputs)
        results.append(_without(outputs, stream.state_outputs))
    stream.pending = samples[count * framing.hop:].copy()
    stacked = {n: np.stack([r[n] for r in results]) for n in (results[0] if results else {})}
    return StreamResult(stacked, count, len(stream.pending), checked)


def _samples(value: Array, framing: AudioFraming) -> Array:
    """A mono PCM buffer as 1-D samples: ``[n]`` or ``[1, n]`` (one stream, batch 1)."""
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InferenceInputError(f"input '{framing.input}' is framed by the bundle: send one mono buffer of "
                                  f"samples, shape [n] or [1, n], not {list(arr.shape)}")
    if arr.dtype.kind not in "fiu":
        raise InferenceInputError(f"input '{framing.input}' must hold audio samples (numbers), not {arr.dtype}")
    return arr


def _without(outputs: Mapping[str, Array], names: frozenset[str]) -> dict[str, Array]:
    return {k: v for k, v in outputs.items() if k not in names}
