from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.errors import TargetError
from edgeml.targets import get_target, list_targets, load_profile_file, parse_profile

BUILTIN = ("arm64-cpu", "intel-npu", "jetson-orin", "x86-cpu")
MINIMAL = 'id = "{id}"\narch = ["x86_64"]\nruntimes = ["onnxruntime"]\nprecisions = ["fp32"]\nmax_opset = 17\n'


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_builtin_profiles_load_and_are_frozen() -> None:
    ids = [t.id for t in list_targets()]
    assert set(BUILTIN) <= set(ids)
    npu = get_target("intel-npu")
    assert npu.static_shapes and npu.runtimes == ("openvino",) and npu.options("openvino").device == "NPU"
    jetson = get_target("jetson-orin")
    assert jetson.options("onnxruntime").providers[0] == "TensorrtExecutionProvider"
    with pytest.raises(AttributeError):
        npu.max_opset = 30  # type: ignore[misc]
    # the manifest copy parses back into the same constraints
    again = parse_profile(npu.to_json(), "manifest")
    assert again.to_json() == npu.to_json()


@pytest.mark.parametrize(("text", "key", "why"), [
    (MINIMAL + "colour = 'red'\n", "colour", "is not a known key"),
    (MINIMAL.replace('["fp32"]', '["fp32", "int4"]'), "precisions", "unknown value 'int4'"),
    (MINIMAL.replace("max_opset = 17", "max_opset = 99"), "max_opset", "between 7 and 30"),
    (MINIMAL.replace("max_opset = 17", 'max_opset = "17"'), "max_opset", "must be int"),
    (MINIMAL.replace('["onnxruntime"]', '["onnxruntime", "onnxruntime"]'), "runtimes", "lists a value twice"),
    (MINIMAL + "[runtime.openvino]\ndevice = 'CPU'\n", "runtime.openvino", "does not list"),
    (MINIMAL + "[runtime.onnxruntime]\ndevice = 'CPU'\n", "runtime.onnxruntime.device", "is not a known key"),
    (MINIMAL + "[runtime.onnxruntime]\nproviders = ['FooExecutionProvider']\n", "runtime.onnxruntime.providers",
     "unknown value"),
    (MINIMAL + "static_shapes = 1\n", "static_shapes", "must be bool"),
])
def test_bad_profiles_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = _write(tmp_path, "bad", text.format(id="bad"))
    with pytest.raises(TargetError) as info:
        load_profile_file(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and why in message


def test_file_name_must_match_the_id(tmp_path: Path) -> None:
    path = _write(tmp_path, "other", MINIMAL.format(id="mine"))
    with pytest.raises(TargetError, match="make them match"):
        load_profile_file(path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken", "id = \n")
    with pytest.raises(TargetError, match=f"{path}: not valid TOML"):
        load_profile_file(path)


def test_user_profile_directories_add_and_override(isolated_edgeml_home: Path, tmp_path: Path, monkeypatch) -> None:
    _write(isolated_edgeml_home / "targets", "my-board", MINIMAL.format(id="my-board"))
    override = MINIMAL.format(id="x86-cpu").replace("max_opset = 17", "max_opset = 13")
    _write(isolated_edgeml_home / "targets", "x86-cpu", override)
    assert get_target("my-board").max_opset == 17
    assert get_target("x86-cpu").max_opset == 13
    # EDGEML_TARGETS_PATH directories come later and win over the home directory
    extra = tmp_path / "extra"
    _write(extra, "x86-cpu", override.replace("max_opset = 13", "max_opset = 15"))
    monkeypatch.setenv("EDGEML_TARGETS_PATH", str(extra))
    assert get_target("x86-cpu").max_opset == 15
    assert {"my-board", *BUILTIN} <= {t.id for t in list_targets()}


def test_unknown_target_lists_known_ones_and_a_toml_path_loads_directly(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"unknown target 'toaster'; known targets: .*x86-cpu"):
        get_target("toaster")
    path = _write(tmp_path, "direct", MINIMAL.format(id="direct"))
    assert get_target(path).id == "direct" and get_target(str(path)).source == str(path)


def test_cli_targets_list_includes_user_profiles(isolated_edgeml_home: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgeml import cli

    _write(isolated_edgeml_home / "targets", "my-board", MINIMAL.format(id="my-board"))
    out = CliRunner().invoke(cli.main, ["targets", "list", "--json"]).output
    entry = next(t for t in json.loads(out) if t["id"] == "my-board")
    assert entry["source"].endswith("my-board.toml") and entry["runtimes"] == ["onnxruntime"]
    table = CliRunner().invoke(cli.main, ["targets", "list"]).output
    assert "my-board" in table
