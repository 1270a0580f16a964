from __future__ import annotations

from pathlib import Path

import pytest

import edgeml
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.passes.check import CheckPass
from edgeml.compiler.passes.load import LoadPass
from edgeml.errors import ConfigError, ModelCheckError
from edgeml.targets import get_target
from tests.compiler.conftest import FAST
from tests.support.tiny_models import tiny_cnn


def _custom_op_model(path: Path, opset: int) -> Path:
    """Relu -> com.example.Swizzle, dynamic batch, at the given opset."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Swizzle", ["r"], ["y"], name="swizzle", domain="com.example")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                     helper.make_opsetid("com.example", 1)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _check(path: Path, target: str, tmp_path: Path, **load_cfg) -> Artifact:
    ctx = BuildContext(target=get_target(target), workdir=tmp_path)
    src = Artifact(path=path, format="onnx", precision="fp32", digest="x")
    loaded = LoadPass(**load_cfg).run(src, ctx)
    return CheckPass().run(loaded, ctx)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    model = _custom_op_model(tmp_path / "m.onnx", opset=22)
    with pytest.raises(ModelCheckError) as info:
        _check(model, "intel-npu", tmp_path)
    text = "\n".join(info.value.problems)
    assert "opset 22 is above target intel-npu's maximum 21" in text
    assert "input 'x' has dynamic shape [N, 4]" in text and "--input-shape x=1x4" in text
    assert "OpenVINO" in text and "Swizzle" in text
    assert len(info.value.problems) >= 3


def test_onnxruntime_targets_report_operators_without_kernels(tmp_path: Path) -> None:
    model = _custom_op_model(tmp_path / "m.onnx", opset=17)
    with pytest.raises(ModelCheckError, match=r"onnxruntime has no kernel for: com.example.Swizzle"):
        _check(model, "arm64-cpu", tmp_path)


def test_input_shape_fixes_dynamic_dims_for_static_targets(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    with pytest.raises(ModelCheckError, match="input 'input' has dynamic shape"):
        _check(model, "jetson-orin", tmp_path)
    art = _check(model, "jetson-orin", tmp_path, input_shapes={"input": [1, 3, 16, 16]})
    assert art.metadata["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert art.metadata["outputs"][0]["shape"] == [1, 10]  # the batch symbol became static in the output too


def test_input_shape_errors_name_the_problem(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    with pytest.raises(ConfigError, match="model's inputs are input"):
        _check(model, "x86-cpu", tmp_path, input_shapes={"image": [1, 3, 16, 16]})
    with pytest.raises(ConfigError, match="has 2 dimensions"):
        _check(model, "x86-cpu", tmp_path, input_shapes={"input": [1, 3]})
    with pytest.raises(ConfigError, match="static"):
        _check(model, "x86-cpu", tmp_path, input_shapes={"input": [1, 3, 32, 32]})


def test_openvino_check_notes_the_device_it_used(tmp_path: Path) -> None:
    art = _check(tiny_cnn(tmp_path / "cnn.onnx"), "intel-npu", tmp_path)
    assert any("NPU is not on this host" in n for n in art.metadata["check_notes"])


def test_compile_fails_before_any_work_with_all_problems(tmp_path: Path, default_key) -> None:
    model = _custom_op_model(tmp_path / "m.onnx", opset=22)
    with pytest.raises(ModelCheckError) as info:
        edgeml.compile(model, "intel-npu", output=tmp_path / "out.edgepkg", **FAST)
    # the batch dim 'N' is no problem any more: a dim named like a batch is resolved to 1 (signature.py)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 2 and "opset 22" in text and "Swizzle" in text
    assert not (tmp_path / "out.edgepkg").exists()


def test_operators_onnxruntime_runs_without_kernels_are_not_problems(tmp_path: Path) -> None:
    """Constant is folded at load; Gelu (opset 20) is an ONNX function ORT expands: neither has a kernel."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [4], [1, 2, 3, 4])),
         helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Gelu", ["a"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "m.onnx"))
    art = _check(tmp_path / "m.onnx", "arm64-cpu", tmp_path)
    assert art.metadata["inputs"][0]["name"] == "x"
