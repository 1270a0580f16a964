"""Scores shared by the layer-sensitivity rankers (ONNX: :mod:`edgeml.compiler.sensitivity`, OpenVINO:
:mod:`edgeml.compiler.sensitivity_openvino`): how much error a layer adds, and the worst layers first."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np

from edgeml.arrays import Array
from edgeml.errors import CompileError


def first_samples(samples: Iterable[Mapping[str, Array]], limit: int) -> list[Mapping[str, Array]]:
    """Up to ``limit`` samples to rank on (every compared tensor of each is held in memory); none is an error."""
    feeds = list(itertools.islice(iter(samples), limit))
    if not feeds:
        raise CompileError("ranking sensitive layers needs at least one sample")
    return feeds


def nmse(candidate: Array, reference: Array) -> float:
    ref = reference.astype(np.float64).ravel()
    diff = candidate.astype(np.float64).ravel() - ref
    return float(diff @ diff / max(float(ref @ ref), 1e-12))


def own_damage(error_out: float, error_in: float) -> float:
    """Error a node adds, weighted by the share of its output error that is new.

    ``out − in`` alone blames nodes that merely amplify error arriving from upstream (a Gemm after a
    badly quantized Conv); ``(out − in)² / out`` keeps the full increment for a node that creates its
    error and shrinks it for one that passes it on.
    """
    if error_out <= error_in:
        return 0.0
    return (error_out - error_in) ** 2 / error_out


def top_names(scores: Mapping[str, tuple[float, float]], top_k: int) -> list[str]:
    """Names by (own damage, output error), worst first. Nodes without own damage still fill the list
    (behind all others) so a caller that widens ``top_k`` after a failed gate keeps making progress."""
    ranked = sorted(scores.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    return [name for name, _ in ranked[:top_k]]
