"""The exporter's example inputs as build samples, for builds given no calibration data.

Random inputs do not fit every model: a text model's ``token_type_ids`` must be 0 or 1 and its ids must
be real token ids, a recurrent state has a meaning. The example an export was traced on (tokenized
sentences for a Hugging Face checkpoint, the user's ``example_inputs`` for a torch module, the saved
example of a ``.pt2``) runs by construction, so without ``--calibration`` the gate, the smoke test and
the reference statistics use it instead of random numbers. It is still not calibration data: quantized
candidates keep asking for ``--calibration``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.data import SampleSet


def example_samples(example: Path | None, specs: Sequence[TensorSpec]) -> SampleSet | None:
    """The example as samples: one per row when every input's first dimension is dynamic and they share
    it (a batch), else the whole example as one sample. None without an example that feeds every input."""
    if example is None:
        return None
    with np.load(example, allow_pickle=False) as data:
        feeds: dict[str, Array] = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
    if sorted(feeds) != sorted(s.name for s in specs):
        return None
    rows = {int(v.shape[0]) if v.ndim else 0 for v in feeds.values()}
    batched = all(s.shape and not isinstance(s.shape[0], int) for s in specs) and len(rows) == 1
    count = rows.pop() if batched else 1
    if count < 2:
        return SampleSet([feeds], None, "the exporter's example input")
    samples = [{name: value[i:i + 1] for name, value in feeds.items()} for i in range(count)]
    return SampleSet(samples, None, "the exporter's example inputs")
