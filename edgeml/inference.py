"""In-process inference: ``edgeml.load(bundle_or_dir)`` returns a :class:`Model` with ``predict``.

The same backends and the same selection the agent uses. A ``.edgepkg`` is verified against the trusted
keys (``TrustStore.default()`` unless ``trust`` is given) and unpacked into the cache, once per bundle
file content; an unpacked directory is re-verified (signature and every file hash) before it is loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle.keys import TrustStore
from edgeml.bundle.manifest import Manifest, TensorSpec
from edgeml.bundle.verify import VerifiedBundle, load_unpacked, unpack_bundle
from edgeml.errors import BundleError, InferenceInputError, SignatureError
from edgeml.fileio import sha256_file
from edgeml.paths import cache_dir
from edgeml.runtimes.base import Backend, backend_class
from edgeml.runtimes.selection import Selection, SelectionPolicy, select_backend
from edgeml.streaming import StreamResult, StreamState, run_stream
from edgeml.textinput import TextEncoder

__all__ = ["Model", "Stream", "load", "load_verified", "open_bundle"]


class Model:
    """A verified bundle loaded in the backend chosen for this host."""

    def __init__(self, bundle: VerifiedBundle, backend: Backend, selection: Selection) -> None:
        self.bundle = bundle
        self.backend = backend
        self.selection = selection
        # What the model is and where it runs: fixed for the life of the Model, so read once.
        self.manifest: Manifest = bundle.manifest
        self.name: str = self.manifest.name
        self.version: str = self.manifest.version
        self.inputs: list[TensorSpec] = self.manifest.inputs
        self.outputs: list[TensorSpec] = self.manifest.outputs
        self.runtime: str = selection.runtime
        self.fallback: bool = selection.fallback
        self._run = backend.run
        # Non-thread-safe runtimes (OpenVINO infer request, LiteRT interpreter) run one call at a time.
        self._lock: threading.Lock | None = None if backend.thread_safe else threading.Lock()
        plan = backend.feed_plan()
        self._single_check = plan[0] if len(plan) == 1 else None
        # what travels beside the model (edgeml.bundle.prepost): state pairs, tokenizer, audio framing
        self.state_pairs = self.manifest.state
        self.framing = self.manifest.audio_framing
        self._text: TextEncoder | None = None
        self._text_lock = threading.Lock()

    # -- description ---------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.backend.device

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "target": self.manifest.target_id,
            "runtime": self.runtime, "precision": self.manifest.precision, "backend": self.runtime,
            "device": self.device, "fallback": self.fallback, "fallback_reason": self.selection.fallback_reason,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "state": [p.to_json() for p in self.state_pairs],
            "tokenizer": self.manifest.raw.get("tokenizer"),
            "framing": self.framing.to_json() if self.framing else None,
        }

    # -- text ----------------------------------------------------------------------------------------
    @property
    def takes_text(self) -> bool:
        return self.manifest.tokenizer is not None

    def encode_text(self, texts: object) -> dict[str, np.ndarray]:
        """The model inputs the bundle's tokenizer makes of ``texts`` (a list of strings)."""
        spec = self.manifest.tokenizer
        if spec is None:
            raise InferenceInputError(f"bundle {self.name}@{self.version} carries no tokenizer: pass the model's "
                                      "inputs as arrays (rebuild with --tokenizer to accept text)")
        encoder = self._text
        if encoder is None:
            with self._text_lock:   # loaded on first use, once: a tokenizer.json takes ~50 ms to parse
                if self._text is None:
                    self._text = TextEncoder(self.bundle.file(spec.file), spec, self.inputs)
                encoder = self._text
        return encoder.encode(texts)

    # -- inference -----------------------------------------------------------------------------------
    def feeds(self, data: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Normalise ``predict``'s arguments into checked feeds (names, dtypes, shapes)."""
        return self.backend.check_feeds(self.raw_feeds(data, **named))

    def raw_feeds(self, data: Any = None, /, **named: Any) -> dict[str, Any]:
        """``predict``'s arguments by input name, unchecked; ``text=[...]`` goes through the tokenizer."""
        if "text" in named and self.takes_text:
            named = {**self.encode_text(named.pop("text")), **named}
        single = self._single_check
        if data is None:
            raw: Mapping[str, Any] = named
        elif isinstance(data, Mapping):
            raw = {**data, **named}
        elif single is not None and not named:
            raw = {single.name: data}
        else:
            names = ", ".join(s.name for s in self.backend.inputs)
            raise InferenceInputError(f"this model takes several inputs ({names}): pass a dict of arrays by name")
        return dict(raw)

    def run_checked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run feeds that already passed :meth:`feeds`."""
        if self._lock is None:
            return self._run(feeds)
        with self._lock:
            return self._run(feeds)

    def predict(self, data: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run the model. ``data``: an array (single-input models) or a dict of arrays by input name;
        ``text=["...", ...]`` for a bundle that carries a tokenizer.

        Returns a dict of output arrays by output name. A stateful model takes its state inputs here
        like any other input; :meth:`stream` keeps them for you.
        """
        # The common case checked inline: one contiguous array of the right dtype and rank for a
        # one-input model. Right after a model run has flushed the CPU caches every call into numpy
        # costs cache misses (dtype equality alone ~5 us), so the dtype is compared by identity: numpy
        # shares one object per builtin dtype, and any other equal dtype takes the full check below.
        check = self._single_check
        if check is not None and type(data) is np.ndarray and not named and data.dtype is check.dtype \
                and data.ndim == check.ndim and data.flags.c_contiguous:
            shape = data.shape
            for axis, size in check.fixed:
                if shape[axis] != size:
                    break
            else:
                # run_checked inlined: one Python frame fewer is ~5 us after a cache-flushing run
                if self._lock is None:
                    return self._run({check.name: data})
                with self._lock:
                    return self._run({check.name: data})
        return self.run_checked(self.feeds(data, **named))

    def stream(self) -> Stream:
        """A stream of calls on a stateful model: state outputs are fed back as the next state inputs,
        and with ``audio_frames`` preprocessing a longer buffer is cut into frames."""
        return Stream(self)

    def smoke_test(self) -> None:
        """Run the bundle's smoke sample and compare with its expected output (raises on mismatch)."""
        smoke = self.manifest.smoke
        if not smoke:
            return
        with np.load(self.bundle.file(smoke["input"])) as f:
            inputs = {k: f[k] for k in f.files}
        with np.load(self.bundle.file(smoke["expected"])) as f:
            expected = {k: f[k] for k in f.files}
        got = self.predict(inputs)
        for name, want in expected.items():
            if name not in got or not np.allclose(got[name], want, rtol=float(smoke.get("rtol", 1e-3)),
                                                  atol=float(smoke.get("atol", 1e-4))):
                raise BundleError(f"{self.name}@{self.version}: smoke test output '{name}' differs from the "
                                  f"expected output on {self.device}")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fb = " fallback" if self.fallback else ""
        return f"Model({self.name}@{self.version} on {self.runtime}/{self.device}{fb})"


class Stream:
    """``with model.stream() as s: s.predict(audio=frame)`` — state kept between calls (see
    :mod:`edgeml.streaming`). One stream is one sequence: use one per audio source, from one thread."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.state = StreamState(model.state_pairs, model.inputs, model.framing)
        self.last: StreamResult | None = None

    def predict(self, data: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        """The model's outputs for this call, without the state outputs (the stream keeps those);
        framed calls stack each frame's outputs on a new first axis."""
        raw = self.model.raw_feeds(data, **named)
        self.last = run_stream(self.model.run_checked, self.model.backend.check_feeds, self.state, raw)
        return self.last.outputs

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()


def open_bundle(path: str | Path, trust: Mapping[str, Ed25519PublicKey] | None = None) -> VerifiedBundle:
    """Verify a bundle file (unpacking it into the cache) or re-verify an unpacked directory."""
    path = Path(path)
    trusted = TrustStore.default() if trust is None else trust
    if not trusted:
        raise SignatureError("no trusted keys: trust the builder's public key with `edgeml keys trust KEY.pub` "
                             "or pass trust=TrustStore([...])")
    if path.is_dir():
        return load_unpacked(path, trusted)
    if not path.is_file():
        raise BundleError(f"{path} does not exist; pass a .edgepkg file or an unpacked bundle directory")
    dest = cache_dir() / "bundles" / sha256_file(path)[:32]
    if dest.is_dir():
        return load_unpacked(dest, trusted)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return unpack_bundle(path, dest, trusted)
    except OSError:
        if dest.is_dir():  # another process unpacked the same bundle at the same moment
            return load_unpacked(dest, trusted)
        raise


def load(
    bundle_or_dir: str | Path,
    trust: Mapping[str, Ed25519PublicKey] | None = None,
    *,
    policy: SelectionPolicy | None = None,
    cpu_fallback: bool | None = None,
    num_threads: int = 0,
) -> Model:
    """Load a signed bundle for inference on this host.

    ``policy`` (or the ``cpu_fallback``/``num_threads`` shortcuts) says what the caller allows beyond
    the bundle's target profile. Raises :class:`~edgeml.errors.BundleError` for an untrusted or damaged
    bundle and :class:`~edgeml.errors.BackendUnavailableError` (with every reason) when nothing here
    can run it.
    """
    bundle = open_bundle(bundle_or_dir, trust)
    if policy is None:
        policy = SelectionPolicy(cpu_fallback=cpu_fallback, num_threads=num_threads,
                                 cache_dir=cache_dir() / "engines")
    return load_verified(bundle, policy)


def load_verified(bundle: VerifiedBundle, policy: SelectionPolicy | None = None) -> Model:
    """Load a bundle that was already verified and unpacked (the agent's store does both)."""
    selection = select_backend(bundle.manifest, policy or SelectionPolicy())
    backend = backend_class(selection.runtime)(bundle.model_path, selection.options)
    return Model(bundle, backend, selection)
