"""The real update machine and states, driven synchronously in the test's thread, in milliseconds.

Everything is the agent's own (Services.build: store, registry, model loader, trust store; the record
file; the health watch) except three seams: bundles come through an in-memory :class:`FakeHttp`
(the agent's HttpClient protocol, with scripted status codes), ``time.sleep`` in the states is recorded
instead of slept (download back-off, rollback pause, probation polling), and the health verdicts can be
scripted with :class:`ScriptedHealth` (the live-traffic versions of these checks are in
test_machine_inprocess.py). Used by the mutation run of machine.py and states.py (scripts/mutation.py).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgeml.bundle import SigningKey
from edgeml.bundle.keys import load_signing_key
from edgeml.desired import DesiredState, parse_desired
from edgeml.jsontypes import JSON
from edgeml.protocol import UpdateState
from edgeml_agent.config import parse_config
from edgeml_agent.services import Services
from edgeml_agent.updates import states
from edgeml_agent.updates.context import UpdateContext
from edgeml_agent.updates.health import HealthWatch, VersionHealth
from edgeml_agent.updates.machine import UpdateMachine
from edgeml_agent.updates.record import RecordFile, UpdateRecord
from tests.support import bundles as bundles_module
from tests.support import tiny_models
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import DEVICE, desired

FLEET = "http://fleet.test"


@dataclass
class Bundles:
    key: SigningKey
    fleet_key: SigningKey
    paths: dict[str, Path]


_VERSIONS = ("1.0.0", "2.0.0", "0.9.0", "2.1.0", "2.2.0")


def build_bundles(tmp: Path) -> Bundles:
    key, fleet_key = SigningKey.generate(), SigningKey.generate()
    src = tmp / "src"
    src.mkdir()
    good = tiny_mlp(src / "v.onnx", seed=0)
    return Bundles(key, fleet_key, {
        "1.0.0": make_bundle(tmp, key, good, version="1.0.0"),
        "2.0.0": make_bundle(tmp, key, tiny_mlp(src / "v2.onnx", seed=1), version="2.0.0"),
        "0.9.0": make_bundle(tmp, key, good, version="0.9.0"),
        "2.1.0": make_bundle(tmp, key, good, version="2.1.0", smoke_offset=1.0),      # its smoke test fails
        "2.2.0": make_bundle(tmp, key, good, version="2.2.0", target="arm64-cpu"),    # another target
    })


def shared_bundles(root: Path) -> Bundles:
    """The bundles (and their keys), built once under ``root`` and reused by later test sessions: the
    mutation run starts a session per mutant, and building them costs more than the tests. A build goes
    through a fresh directory and a rename, so a concurrent session never sees half of it."""
    digest = hashlib.sha256(b"".join(Path(m.__file__ or "").read_bytes() for m in (bundles_module, tiny_models))
                            + Path(__file__).read_bytes()).hexdigest()[:16]
    done = root / f"machine-rig-bundles-{digest}"
    if not (done / "builder.key").exists():
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".machine-rig-"))
        built = build_bundles(staging)
        (staging / "builder.key").write_bytes(built.key.private_pem())
        (staging / "fleet.key").write_bytes(built.fleet_key.private_pem())
        try:
            staging.rename(done)
        except OSError:   # another session finished first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    return Bundles(load_signing_key(done / "builder.key"), load_signing_key(done / "fleet.key"),
                   {v: done / f"m-{v}.edgepkg" for v in _VERSIONS})


class RunawayLoop(BaseException):
    """Not an Exception: the machine turns those into its ``fail`` exit, and this must end the test."""


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self._body = status, body

    def iter_bytes(self) -> Iterator[bytes]:
        yield self._body


class FakeHttp:
    """The agent's HttpClient seam: answers from files; ``statuses`` scripts the next answers' codes."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.statuses: list[int] = []
        self.requests: list[tuple[str, dict[str, str]]] = []

    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        raise AssertionError("the machine only streams bundles")

    @contextmanager
    def stream(self, url: str, *, headers: Mapping[str, str], timeout: float) -> Iterator[_Response]:
        self.requests.append((url, dict(headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        yield _Response(status, self.files[url].read_bytes() if status == 200 else b"")


class ScriptedHealth(HealthWatch):
    """A health watch whose live verdict for the new version is scripted (the baseline stays real)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, VersionHealth] = {}
        self.asked: list[tuple[str, str, float | None]] = []

    def health(self, model: str, version: str, since: float | None = None) -> VersionHealth:
        self.asked.append((model, version, since))
        return self.live.get(version) or super().health(model, version, since)


@dataclass
class Events:
    seen: list[dict[str, JSON]] = field(default_factory=list)

    def event(self, kind: str, **data: JSON) -> None:
        self.seen.append({"kind": kind, **data})


class MachineRig:
    def __init__(self, tmp: Path, bundles: Bundles, monkeypatch: pytest.MonkeyPatch, **updates: Any) -> None:
        self.bundles = bundles
        trusted = tmp / "trusted"
        trusted.mkdir()
        (trusted / "builder.pub").write_bytes(bundles.key.public_pem())
        self.data = tmp / "agent"
        # the fleet key has its own role on the device: trusted/fleet/, never beside the bundle signers
        (self.data / "trusted" / "fleet").mkdir(parents=True)
        (self.data / "trusted" / "fleet" / "fleet.pub").write_bytes(bundles.fleet_key.public_pem())
        config = parse_config({
            "data_dir": str(self.data), "trusted_keys": [str(trusted)], "server": {"port": 0},
            "telemetry": {"enabled": False},
            "updates": {"probation_s": 0, "min_requests": 5, "targets": ["x86-cpu"], "download_attempts": 3,
                        "download_retry_s": 0.5, **updates},
        })
        self.http = FakeHttp()
        self.points: list[tuple[UpdateState, str]] = []
        self.hooks: dict[tuple[UpdateState, str], Any] = {}
        self.services = Services.build(config, http=self.http, on_state=self._on_state)
        self.sleeps: list[float] = []
        self.clock: list[float] | None = None
        self.on_sleep: Callable[[float], None] | None = None
        # only the states module's view of time: the runtime, the shadow thread and the test keep theirs
        monkeypatch.setattr(states, "time", SimpleNamespace(sleep=self._sleep, monotonic=time.monotonic))
        self._monkeypatch = monkeypatch
        self.records = RecordFile(self.data / "updates" / "state.json")
        self.health = ScriptedHealth()
        self.events = Events()
        self.ctx = UpdateContext(services=self.services, records=self.records, work_dir=self.data / "updates",
                                 settings=config.updates.settings, health=self.health, events=self.events,
                                 server_url=FLEET + "/", headers={"Authorization": "Bearer t"}, device_id=DEVICE)
        self.machine = UpdateMachine(self.ctx)
        self.services.registry.add_observer(self.health.observe)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > 200:   # no test here sleeps this often: a state retrying (or polling) forever
            raise RunawayLoop(f"the states slept {len(self.sleeps)} times: {self.sleeps[-5:]}")
        if self.clock is not None:
            self.clock[0] += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def use_fake_clock(self) -> list[float]:
        """The states' wall clock stands still except when they sleep: probation's deadline in no time."""
        self.clock = [time.time()]
        clock = self.clock
        self._monkeypatch.setattr(states, "now", lambda: clock[0])
        return clock

    def _on_state(self, state: UpdateState, point: str) -> None:
        self.points.append((state, point))
        hook = self.hooks.pop((state, point), None)
        if hook is not None:
            hook()

    def install(self, version: str) -> None:
        """``version`` installed, current and served (the agent as it runs before an update)."""
        self.services.store.install(self.bundles.paths[version])
        self.services.registry.swap("m", self.services.load_model("m"))

    def wire(self, version: str, *, url: str | None = None, **kw: Any) -> bytes:
        bundle = self.bundles.paths[version]
        url = url or f"/bundles/{bundle.name}"
        kw.setdefault("probation", {"seconds": 0, "min_requests": 5})   # judged once, at once
        self.http.files[url if "://" in url else FLEET + url] = bundle
        return desired(self.bundles.fleet_key, bundle, url, version=version, **kw)

    def parse(self, wire: bytes) -> DesiredState:
        return parse_desired(wire, self.services.trust.fleet, device_id=DEVICE, now=0.0)

    def update(self, version: str, **kw: Any) -> UpdateRecord:
        """Offer ``version`` and run the machine until it is idle again; the record it ends with."""
        state = self.parse(self.wire(version, **kw))
        model = state.models[0]
        self.machine.begin(state, model)
        return self.machine.run_until_idle()

    def serving(self, name: str = "m") -> str:
        return self.services.registry.get(name).version

    def chain(self, rec: UpdateRecord) -> list[str]:
        return [str(h[3]) for h in rec.history]

