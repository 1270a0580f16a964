"""Fixtures of the tests that drive the real update machine in the test's thread (see machine_rig.py).
test_machine_inprocess.py defines its own ``rig`` (a whole agent), which takes precedence there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.updates.machine_rig import Bundles, MachineRig, shared_bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    # shared by every session of this user (pytest-of-<user>/): see shared_bundles
    return shared_bundles(tmp_path_factory.getbasetemp().parent)


@pytest.fixture
def rig(tmp_path: Path, bundles: Bundles, monkeypatch: pytest.MonkeyPatch) -> Iterator[MachineRig]:
    r = MachineRig(tmp_path, bundles, monkeypatch)
    r.install("1.0.0")
    yield r
    r.services.registry.close()
