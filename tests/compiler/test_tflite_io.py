"""The ONNX <-> TFLite tensor map (names, layouts) and the I/O naming of onnx2tf outputs; pure logic."""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.passes.convert_tflite import _pair
from edgeml.compiler.tflite_inspect import TensorInfo, TfliteInfo
from edgeml.compiler.tflite_io import io_map, is_identity, to_onnx_outputs, to_tflite_feeds
from edgeml.errors import CompileError


def _info(inputs, outputs):
    return TfliteInfo(path=None,  # type: ignore[arg-type]
                      schema_version=3, inputs=[TensorInfo(n, "float32", s) for n, s in inputs],
                      outputs=[TensorInfo(n, "float32", s) for n, s in outputs], op_counts={}, custom_ops=[],
                      weight_dtypes={}, subgraphs=1)


def test_channels_last_tensors_are_mapped_and_converted_both_ways():
    onnx_in = [TensorSpec("img", "float32", (1, 3, 8, 6))]
    onnx_out = [TensorSpec("feat", "float32", (1, 4, 8, 6)), TensorSpec("score", "float32", (1, 2))]
    mapping = io_map(onnx_in, onnx_out, _info([("img", (1, 8, 6, 3))], [("feat", (1, 8, 6, 4)), ("score", (1, 2))]))
    assert mapping["inputs"] == [{"onnx": "img", "tflite": "img", "perm": [0, 2, 3, 1], "certain": True}]
    assert mapping["outputs"][0]["perm"] == [0, 2, 3, 1] and mapping["outputs"][1]["perm"] is None
    assert not is_identity(mapping)
    x = np.arange(144, dtype=np.float32).reshape(1, 3, 8, 6)
    assert to_tflite_feeds({"img": x}, mapping)["img"].shape == (1, 8, 6, 3)
    y = np.random.default_rng(0).normal(size=(1, 8, 6, 4)).astype(np.float32)
    back = to_onnx_outputs({"feat": y, "score": np.zeros((1, 2), np.float32)}, mapping)
    np.testing.assert_array_equal(back["feat"], y.transpose(0, 3, 1, 2))


def test_same_shapes_are_identity_and_ambiguous_cubes_are_flagged():
    spec = [TensorSpec("x", "float32", (1, 8, 8, 8))]
    mapping = io_map(spec, spec, _info([("x", (1, 8, 8, 8))], [("x", (1, 8, 8, 8))]))
    assert is_identity(mapping) and mapping["inputs"][0]["certain"] is False
    with pytest.raises(CompileError, match="not the ONNX shape"):
        io_map([TensorSpec("x", "float32", (1, 3, 4))], [], _info([("x", (2, 2, 3))], []))


def test_onnx2tf_io_names_are_paired_by_name_then_shape_then_ordinal():
    specs = [TensorSpec("boxes", "float32", ("N", 4)), TensorSpec("scores", "float32", ("N", 4))]
    # SavedModel decoration stripped: serving_default_boxes:0 -> boxes
    assert _pair([("serving_default_scores:0", "", [1, 4]), ("x", "", [1, 4])], specs) == ["scores", "boxes"]
    # same shapes, no names: the ordinal in output_1 / Identity_1 / PartitionedCall:1 decides
    assert _pair([("StatefulPartitionedCall:1", "output_1", [1, 4]), ("StatefulPartitionedCall:0", "output_0", [1, 4])],
                 specs) == ["scores", "boxes"]
    # distinct shapes decide where names do not
    specs2 = [TensorSpec("a", "float32", (1, 10)), TensorSpec("b", "float32", (1, 3, 5, 5))]
    assert _pair([("Identity", "", [1, 5, 5, 3]), ("Identity_1", "", [1, 10])], specs2) == ["b", "a"]
