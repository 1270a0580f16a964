"""Sample data for a build: calibration (quantizers), held-out evaluation (the fidelity gate),
reference statistics and the bundle's smoke sample.

A :class:`SampleSet` is a list of feeds (``dict[input name, Array]``, one sample each, shaped like
the model's inputs with batch 1) plus optional labels. Sources:

- ``.npz``: one array per model input, keyed by input name, first axis = samples;
- ``.npy``: one array for a single-input model, first axis = samples;
- a folder of images (``.png``/``.jpg``/...), read with PIL and prepared with a declared
  :class:`Preprocess` (resize, colour order, scale, mean/std, layout);
- a folder of ``.npz`` files (no images), each as above, taken in file-name order (what
  ``edgeml-fleet captures export`` writes);
- a Python iterable of arrays (single-input models) or of dicts of arrays.

Arrays whose rank equals the model input's rank are split into batch-1 slices (``a[i:i+1]``); arrays
with one more axis than the input are indexed (``a[i]``). Labels come from ``.npy`` or ``.txt`` (one
integer per line) or ``.csv`` (a ``label`` column, one row per sample: the template a captures export
writes). :func:`split` holds out evaluation samples when the user gave only one set.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.preprocess import Preprocess
from edgeml.compiler.request import LabelSource, SampleSource
from edgeml.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class SampleSet:
    """Feeds (one dict per sample) and optional labels (one per sample)."""

    def __init__(self, feeds: Sequence[dict[str, Array]], labels: Array | None = None,
                 source: str = "") -> None:
        self.feeds = list(feeds)
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != len(self.feeds):
                raise ConfigError(f"{len(labels)} labels for {len(self.feeds)} samples{_from(source)}; "
                                  "give exactly one label per sample")
        self.labels = labels
        self.source = source
        self._progress: Callable[[str, int, int], None] | None = None
        self._label = ""

    def with_progress(self, label: str, callback: Callable[[str, int, int], None]) -> SampleSet:
        """The same samples; iterating reports ``callback(label, done, total)`` (progress bars for
        calibration without the quantizers knowing about them)."""
        view = SampleSet(self.feeds, self.labels, self.source)
        view._progress, view._label = callback, label
        return view

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[dict[str, Array]]:
        if self._progress is None:
            yield from self.feeds
            return
        total = len(self.feeds)
        for i, feed in enumerate(self.feeds):
            yield feed
            self._progress(self._label, i + 1, total)

    def __getitem__(self, index: int) -> dict[str, Array]:
        return self.feeds[index]

    def subset(self, indices: Sequence[int]) -> SampleSet:
        labels = self.labels[list(indices)] if self.labels is not None else None
        return SampleSet([self.feeds[i] for i in indices], labels, self.source)

    def stacked(self) -> dict[str, Array]:
        """All samples concatenated along the batch axis, per input."""
        if not self.feeds:
            return {}
        return {name: stack_samples([f[name] for f in self.feeds]) for name in self.feeds[0]}

    def fingerprint(self) -> str:
        """A short hash of the data (for cache keys: a quantizer's output depends on it)."""
        h = hashlib.sha256()
        for feed in self.feeds:
            for name in sorted(feed):
                h.update(name.encode())
                h.update(str(feed[name].dtype).encode())
                h.update(str(feed[name].shape).encode())
                h.update(np.ascontiguousarray(feed[name]).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]


def stack_samples(values: Sequence[Array]) -> Array:
    """Batch-1 samples joined along the first axis; scalar samples (shape ``[]``) become a ``[N]`` vector."""
    return np.stack(values) if values[0].ndim == 0 else np.concatenate(values)


def _contiguous(part: Array) -> Array:
    # np.ascontiguousarray turns a 0-d array into shape [1]: a scalar input must stay shape []
    return np.array(part) if np.ndim(part) == 0 else np.ascontiguousarray(part)


def _from(source: str) -> str:
    return f" (from {source})" if source else ""


def _rank_split(name: str, arr: Array, spec: TensorSpec | None, source: str) -> list[Array]:
    """Split an array whose first axis counts samples into batch-1 feeds shaped like the input."""
    if arr.ndim == 0:
        raise ConfigError(f"input '{name}'{_from(source)} is a scalar; the first axis must count samples")
    rank = len(spec.shape) if spec else arr.ndim
    if arr.ndim == rank:
        parts = [arr[i:i + 1] for i in range(arr.shape[0])]
    elif arr.ndim == rank + 1:
        parts = [arr[i] for i in range(arr.shape[0])]
    else:
        want = list(spec.shape) if spec else []
        raise ConfigError(
            f"input '{name}'{_from(source)} has shape {list(arr.shape)}, which does not fit the model input "
            f"{want}: give [samples, ...] with the input's rank, or one more leading axis"
        )
    if spec is not None:
        dtype = np.dtype(spec.dtype)
        if arr.dtype != dtype:
            if not np.can_cast(arr.dtype, dtype, casting="same_kind") and arr.dtype.kind not in "iuf":
                raise ConfigError(f"input '{name}'{_from(source)} has dtype {arr.dtype}; the model wants {dtype}")
            parts = [p.astype(dtype) for p in parts]
        for part in parts[:1]:
            bad = [(d, a) for d, a in zip(spec.shape, part.shape, strict=False)
                   if isinstance(d, int) and d > 0 and d != a]
            if bad:
                raise ConfigError(f"input '{name}'{_from(source)}: a sample has shape {list(part.shape)}; "
                                  f"the model wants {list(spec.shape)}")
    return [_contiguous(p) for p in parts]


def from_arrays(arrays: Mapping[str, Array], specs: Sequence[TensorSpec], source: str = "",
                labels: Array | None = None) -> SampleSet:
    by_name = {s.name: s for s in specs}
    missing = [n for n in by_name if n not in arrays]
    unknown = [n for n in arrays if n not in by_name]
    if missing or unknown:
        raise ConfigError(
            f"sample arrays{_from(source)} are keyed {sorted(arrays)}; the model's inputs are "
            f"{sorted(by_name)} (missing: {missing or '-'}, unknown: {unknown or '-'})"
        )
    per_input = {n: _rank_split(n, np.asarray(a), by_name[n], source) for n, a in arrays.items()}
    counts = {n: len(v) for n, v in per_input.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"inputs{_from(source)} have different sample counts: {counts}")
    count = next(iter(counts.values()), 0)
    feeds = [{n: per_input[n][i] for n in per_input} for i in range(count)]
    return SampleSet(feeds, labels, source)


def load_labels(path: str | Path) -> Array:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).reshape(-1)
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        try:
            return np.asarray([int(ln) for ln in lines], dtype=np.int64)
        except ValueError as exc:
            raise ConfigError(f"{path}: every line must be one integer class index ({exc})") from exc
    if path.suffix == ".csv":
        return _csv_labels(path)
    raise ConfigError(f"labels file {path} must be .npy, .txt (one integer per line) or .csv (a 'label' column)")


def _csv_labels(path: Path) -> Array:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "label" not in rows[0]:
        raise ConfigError(f"{path} has no 'label' column")
    labels = []
    for i, row in enumerate(rows, start=2):
        try:
            labels.append(int(row["label"]))
        except (TypeError, ValueError):
            raise ConfigError(f"{path} line {i}: label {row['label']!r} is not an integer class index; "
                              "fill in every row's 'label' column") from None
    return np.asarray(labels, dtype=np.int64)


def load_samples(source: SampleSource, specs: Sequence[TensorSpec], *, preprocess: Preprocess | None = None,
                 labels: LabelSource | None = None) -> SampleSet:
    """Load samples from any supported source (see the module docstring) for a model with ``specs``."""
    label_array = None if labels is None else (
        load_labels(labels) if isinstance(labels, (str, Path)) else np.asarray(labels))
    if isinstance(source, SampleSet):
        return SampleSet(source.feeds, label_array if label_array is not None else source.labels, source.source)
    if isinstance(source, (str, Path)):
        return _load_path(Path(source), specs, preprocess, label_array)
    if isinstance(source, np.ndarray):
        return from_arrays({_single_input(specs, "an array"): source}, specs, "an array", label_array)
    if isinstance(source, Mapping):
        return from_arrays({str(k): np.asarray(v) for k, v in source.items()}, specs, "a dict", label_array)
    if isinstance(source, Iterable):
        return _from_iterable(source, specs, label_array)
    raise ConfigError(f"cannot use {type(source).__name__} as samples; give a .npz/.npy file, an image folder, "
                      "or an iterable of arrays or dicts of arrays")


def _single_input(specs: Sequence[TensorSpec], what: str) -> str:
    if len(specs) != 1:
        raise ConfigError(f"{what} can only feed a single-input model; this one has inputs "
                          f"{[s.name for s in specs]}: use a .npz keyed by input name, or dicts")
    return specs[0].name


def _load_path(path: Path, specs: Sequence[TensorSpec], preprocess: Preprocess | None,
               labels: Array | None) -> SampleSet:
    if path.is_dir():
        npz_files = sorted(path.glob("*.npz"))
        if npz_files and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return _load_npz_folder(npz_files, specs, labels, str(path))
        return _load_images(path, specs, preprocess, labels)
    if not path.is_file():
        raise ConfigError(f"sample data {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return from_arrays(arrays, specs, str(path), labels)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        return from_arrays({_single_input(specs, f"{path} (.npy)"): arr}, specs, str(path), labels)
    raise ConfigError(f"sample data {path} must be a .npz (keys = input names), a .npy (single input) "
                      "or a folder of images")


def _load_npz_folder(files: Sequence[Path], specs: Sequence[TensorSpec], labels: Array | None,
                     source: str) -> SampleSet:
    feeds: list[dict[str, Array]] = []
    for f in files:
        with np.load(f, allow_pickle=False) as data:
            feeds += from_arrays({k: data[k] for k in data.files}, specs, str(f)).feeds
    return SampleSet(feeds, labels, source)


def _load_images(folder: Path, specs: Sequence[TensorSpec], preprocess: Preprocess | None,
                 labels: Array | None) -> SampleSet:
    name = _single_input(specs, f"image folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    spec = specs[0]
    prep = preprocess or _default_preprocess(spec)
    feeds = []
    for f in files:
        arr = prep.apply(f, spec.dtype)
        bad = [(d, a) for d, a in zip(spec.shape, arr.shape, strict=False) if isinstance(d, int) and d > 0 and d != a]
        if len(arr.shape) != len(spec.shape) or bad:
            raise ConfigError(f"image {f} becomes shape {list(arr.shape)} after preprocessing; the model wants "
                              f"{list(spec.shape)}: declare the preprocessing (size WxH, layout)")
        feeds.append({name: arr})
    return SampleSet(feeds, labels, str(folder))


def _default_preprocess(spec: TensorSpec) -> Preprocess:
    """Guess size and layout from a static 4-D input; anything else must be declared."""
    shape = spec.shape
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
        c1, c3 = shape[1], shape[3]
        if c1 in (1, 3):
            return Preprocess(size=(int(shape[3]), int(shape[2])), layout="NCHW", color="GRAY" if c1 == 1 else "RGB")
        if c3 in (1, 3):
            return Preprocess(size=(int(shape[2]), int(shape[1])), layout="NHWC", color="GRAY" if c3 == 1 else "RGB")
    raise ConfigError(f"cannot infer image preprocessing for input {spec.name} {list(shape)}; declare it "
                      "(size WxH, layout NCHW/NHWC, mean/std)")


def _from_iterable(source: Iterable[object], specs: Sequence[TensorSpec], labels: Array | None) -> SampleSet:
    by_name = {s.name: s for s in specs}
    feeds: list[dict[str, Array]] = []
    for i, item in enumerate(source):
        if isinstance(item, Mapping):
            raw = {str(k): np.asarray(v) for k, v in item.items()}
        else:
            raw = {_single_input(specs, "an iterable of arrays"): np.asarray(item)}
        if set(raw) != set(by_name):
            raise ConfigError(f"sample {i} has inputs {sorted(raw)}; the model's inputs are {sorted(by_name)}")
        feed = {}
        for n, a in raw.items():
            spec = by_name[n]
            if a.ndim in (len(spec.shape), len(spec.shape) - 1):
                # one item is one sample: as the input takes it (a state [2, batch, 128], a scalar), or
                # without its batch axis; either way it gets a samples axis the split below removes
                a = a[None]
            parts = _rank_split(n, a, spec, f"sample {i}")
            if len(parts) != 1:
                raise ConfigError(f"sample {i} input '{n}' holds {len(parts)} samples; give one sample per item")
            feed[n] = parts[0]
        feeds.append(feed)
    return SampleSet(feeds, labels, "an iterable")


def random_samples(specs: Sequence[TensorSpec], count: int, seed: int = 0,
                   dims: Mapping[str, int] | None = None) -> SampleSet:
    """Synthetic inputs (standard normal floats, small non-negative integers) for builds without data.
    Symbolic dimensions become 1 (or the value in ``dims``)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for s in specs:
            shape = [d if isinstance(d, int) and d > 0 else (dims or {}).get(str(d), 1) for d in s.shape]
            dtype = np.dtype(s.dtype)
            if dtype.kind == "f":
                feed[s.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feed[s.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feed[s.name] = rng.integers(0, 4, shape).astype(dtype)
        feeds.append(feed)
    return SampleSet(feeds, None, "random")


def split(samples: SampleSet, eval_fraction: float = 0.25, seed: int = 0) -> tuple[SampleSet, SampleSet]:
    """Split one set into (calibration, evaluation); the evaluation part is never used to calibrate.
    With a single sample both parts are that sample (nothing else is possible)."""
    n = len(samples)
    if n < 2:
        return samples, samples
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(n * eval_fraction))
    return samples.subset(sorted(order[held:].tolist())), samples.subset(sorted(order[:held].tolist()))
