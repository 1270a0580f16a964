"""The toolchain manager: marker, recipe hash, missing/outdated errors, install and the CLI.

The install tests use a recipe without packages (a bare venv: fast, offline) for the venv + marker +
reinstall logic, and one slow test runs pip for real against a package that cannot exist; the real
TFLite recipe is installed by tests/support/toolchain.py for the conversion tests.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeml.cli import main
from edgeml.errors import ToolchainError
from edgeml.toolchains import RECIPES, find, install, installed, is_current, remove, require, toolchains_dir
from edgeml.toolchains import manager as manager_mod
from edgeml.toolchains.recipes import TFLITE, TORCH, Recipe


@pytest.fixture
def tc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "toolchains"
    monkeypatch.setenv("EDGEML_TOOLCHAINS_DIR", str(d))
    return d


@pytest.fixture
def tiny_recipe(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    recipe = Recipe(name="tiny", description="test recipe", packages=(), report=("edgeml-absent",),
                    entry_points=("python",))
    monkeypatch.setitem(RECIPES, "tiny", recipe)
    return recipe


def test_toolchains_dir_follows_its_own_variable_then_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEML_TOOLCHAINS_DIR", raising=False)
    monkeypatch.setenv("EDGEML_CACHE_DIR", str(tmp_path / "cache"))
    assert toolchains_dir() == tmp_path / "cache" / "toolchains"
    monkeypatch.setenv("EDGEML_TOOLCHAINS_DIR", str(tmp_path / "tc"))
    assert toolchains_dir() == tmp_path / "tc"


def test_tflite_recipe_pins_every_package_and_hash_tracks_changes():
    assert all("==" in p for p in TFLITE.packages)
    pins = dict(p.split("==") for p in TFLITE.packages)
    assert pins["numpy"].startswith("1.26") and pins["tensorflow"].startswith("2.19")
    assert pins["onnx"].startswith("1.19") and pins["protobuf"].startswith("4.")
    assert TFLITE.hash() == TFLITE.hash()
    changed = replace(TFLITE, packages=(*TFLITE.packages[:-1], "psutil==5.9.6"))
    assert changed.hash() != TFLITE.hash()


def test_torch_recipe_pins_the_cpu_wheel_exactly():
    """An open torch range makes pip take a multi-GB CUDA build; 2.13.0 is the CPU wheel sites keep."""
    assert all("==" in p for p in TORCH.packages)
    pins = dict(p.split("==") for p in TORCH.packages)
    assert pins["torch"] == "2.13.0"
    assert {"onnxscript", "onnx", "transformers", "tokenizers"} <= set(pins)
    # the same numpy/onnx a user's process holds beside edgeml (its own environment pins these too)
    assert pins["numpy"].startswith("2.") and pins["onnx"].startswith("1.23")
    assert TORCH.hash() != TFLITE.hash() and TORCH.size_hint != TFLITE.size_hint


def test_missing_toolchain_error_names_the_install_command(tc_dir):
    assert find("tflite") is None
    with pytest.raises(ToolchainError) as err:
        require("tflite", "converting ONNX models to TFLite")
    message = str(err.value)
    assert "edgeml toolchain install tflite" in message
    assert "is not installed" in message and str(tc_dir / "tflite") in message


def test_outdated_marker_is_not_used(tc_dir):
    root = tc_dir / "tflite"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    (root / "edgeml-toolchain.json").write_text(json.dumps({"name": "tflite", "recipe_hash": "old"}))
    assert find("tflite") is None
    assert [tc.name for tc in installed()] == ["tflite"] and not is_current(installed()[0])
    with pytest.raises(ToolchainError, match="outdated"):
        require("tflite")


def test_unknown_toolchain_is_refused(tc_dir):
    with pytest.raises(ToolchainError, match="unknown toolchain 'nope'; known: tflite, torch"):
        require("nope")


def test_install_writes_marker_last_and_reinstalls_when_the_recipe_changes(tc_dir, tiny_recipe, monkeypatch):
    lines: list[str] = []
    tc = install("tiny", log=lines.append)
    assert tc.python.exists()
    marker = json.loads((tc.root / "edgeml-toolchain.json").read_text())
    assert marker["recipe_hash"] == tiny_recipe.hash() and marker["packages"] == []
    assert marker["versions"] == {} and marker["python"].startswith("3.") and marker["size_bytes"] > 0
    assert any("creating the virtual environment" in line for line in lines)
    assert find("tiny") is not None
    # a current install is returned as is
    stamp = marker["installed_at"]
    assert install("tiny").marker["installed_at"] == stamp
    # the subprocess environment puts the toolchain's bin/ first and hides edgeml's site-packages
    env = tc.env()
    assert env["PATH"].split(":")[0] == str(tc.bin_dir) and "PYTHONPATH" not in env
    # a changed recipe makes the install stale: require() refuses, install() rebuilds it
    monkeypatch.setitem(RECIPES, "tiny", replace(tiny_recipe, name="tiny", report=("other",), description="x"))
    monkeypatch.setattr(Recipe, "hash", lambda self: "changed-" + self.description)
    assert find("tiny") is None
    rebuilt = install("tiny")
    assert rebuilt.marker["recipe_hash"] == RECIPES["tiny"].hash()
    assert remove("tiny") and not (tc_dir / "tiny").exists() and not remove("tiny")


@pytest.mark.slow
def test_failed_install_leaves_no_usable_toolchain(tc_dir, monkeypatch):
    broken = Recipe(name="broken", description="", packages=("edgeml-no-such-package==0.0.0",), report=(),
                    entry_points=())
    monkeypatch.setitem(RECIPES, "broken", broken)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # fail fast, offline
    with pytest.raises(ToolchainError, match=r"pip install .* failed"):
        install("broken")
    assert find("broken") is None and not (tc_dir / "broken" / "edgeml-toolchain.json").exists()


def test_cli_list_shows_size_versions_and_state(tc_dir, tiny_recipe):
    runner = CliRunner()
    empty = runner.invoke(main, ["toolchain", "list"])
    assert empty.exit_code == 0 and "no toolchains installed" in empty.output
    assert "edgeml toolchain install NAME" in empty.output
    install("tiny")
    result = runner.invoke(main, ["toolchain", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["name"] == "tiny" and rows[0]["current"] and rows[0]["size_bytes"] > 0
    assert rows[0]["path"] == str(tc_dir / "tiny")
    text = runner.invoke(main, ["toolchain", "list"]).output
    assert "tiny" in text and "KiB" in text and "current" in text


def test_cli_install_rejects_unknown_names(tc_dir):
    result = CliRunner().invoke(main, ["toolchain", "install", "nope"])
    assert result.exit_code == 2 and "tflite" in result.output


def test_install_timeout_kills_pip(tc_dir, tiny_recipe, monkeypatch):
    """A pip that hangs (dead index, no output) is killed by the watchdog and reported."""
    def slow_step(log, cmd, what, timeout):
        return original(log, ["sleep", "30"], what, 0.5)

    original = manager_mod._step
    monkeypatch.setattr(manager_mod, "_step", slow_step)
    with pytest.raises(ToolchainError, match="failed"):
        install("tiny")
