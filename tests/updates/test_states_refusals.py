"""Each update state's side effect and refusals, on the real machine, store, loader and registry
(tests/updates/machine_rig.py): where the bundle is fetched from and how often, which bundles are
refused and why, what a failed update cleans up, and what a commit keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.errors import UpdateError
from edgeml.protocol import UpdateState as S
from edgeml_agent.updates.health import VersionHealth
from tests.updates.helpers import desired
from tests.updates.machine_rig import FLEET, Bundles, MachineRig

OK_CHAIN = ["downloading", "verifying", "staging", "smoke_testing", "switching", "probation", "committed", "idle"]


def downloads(r: MachineRig) -> list[str]:
    return sorted(p.name for p in (r.data / "updates" / "downloads").iterdir())


def test_a_good_update_is_fetched_from_the_fleet_with_its_token_and_committed(rig: MachineRig) -> None:
    rec = rig.update("2.0.0", url="/bundles/m-2.0.0.edgepkg")
    assert rig.chain(rec) == OK_CHAIN
    assert rig.http.requests == [(f"{FLEET}/bundles/m-2.0.0.edgepkg", {"Authorization": "Bearer t"})]
    assert rec.committed == {"m": "2.0.0"} and rig.records.load().committed == {"m": "2.0.0"}
    assert rig.serving() == "2.0.0" and rig.services.store.current("m") == "2.0.0"
    assert downloads(rig) == []          # the downloaded bundle is unpacked in the store, its file deleted
    assert rig.services.store.versions("m") == ["1.0.0", "2.0.0"]   # keep_versions = 3: nothing pruned
    size = rig.bundles.paths["2.0.0"].stat().st_size
    assert (S.DOWNLOADING, f"bytes={size}/{size}") in rig.points     # the crash tests stop at these points
    assert rig.points.index((S.SWITCHING, "mid")) > rig.points.index((S.SWITCHING, "enter"))


def test_an_absolute_url_is_used_as_it_is(rig: MachineRig) -> None:
    rec = rig.update("2.0.0", url="https://mirror.test/m.edgepkg")
    assert rec.committed == {"m": "2.0.0"}
    assert [u for u, _ in rig.http.requests] == ["https://mirror.test/m.edgepkg"]


def test_commit_prunes_to_keep_versions_never_the_current(tmp_path: Path, bundles: Bundles,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, keep_versions=2)
    r.install("0.9.0")
    r.install("1.0.0")
    assert r.update("2.0.0").committed == {"m": "2.0.0"}
    assert r.services.store.versions("m") == ["1.0.0", "2.0.0"]
    r.services.registry.close()


def test_transient_download_errors_are_retried_with_a_doubling_pause(rig: MachineRig,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="edgeml_agent.updates")
    rig.http.statuses = [503, 502]
    rec = rig.update("2.0.0")
    assert rec.committed == {"m": "2.0.0"}
    assert len(rig.http.requests) == 3
    assert rig.sleeps[:2] == [0.5, 1.0]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][:2] == [
        "download attempt 1 failed: bundle server answered 503",
        "download attempt 2 failed: bundle server answered 502"]


def test_the_retry_pause_is_capped_at_30_s(tmp_path: Path, bundles: Bundles,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, download_retry_s=20.0)
    r.install("1.0.0")
    r.http.statuses = [503, 503]
    assert r.update("2.0.0").committed == {"m": "2.0.0"}
    assert r.sleeps[:2] == [20.0, 30.0]
    r.services.registry.close()


def test_a_download_failing_every_attempt_fails_the_update_without_a_last_pause(rig: MachineRig) -> None:
    rig.http.statuses = [503, 503, 503]
    rec = rig.update("2.0.0")
    assert rig.chain(rec) == ["downloading", "failed", "idle"]
    assert rec.reason == "download of m@2.0.0 failed 3 times"
    assert rec.refused == {"m@2.0.0": "download of m@2.0.0 failed 3 times"}
    assert len(rig.http.requests) == 3 and rig.sleeps == [0.5, 1.0]
    assert rig.serving() == "1.0.0"


def test_a_refused_download_is_not_retried(rig: MachineRig) -> None:
    rig.http.statuses = [404]
    rec = rig.update("2.0.0")
    assert rig.chain(rec) == ["downloading", "failed", "idle"]
    assert "HTTP 404" in (rec.reason or "")
    assert len(rig.http.requests) == 1 and rig.sleeps == []


def test_a_bundle_for_another_target_is_refused(rig: MachineRig) -> None:
    rec = rig.update("2.2.0")
    assert rig.chain(rec) == ["downloading", "verifying", "failed", "idle"]
    assert rec.reason == "the bundle is built for target arm64-cpu; this device runs x86-cpu"
    assert downloads(rig) == []       # the refused bundle is deleted
    assert rig.services.store.versions("m") == ["1.0.0"]


def test_a_bundle_other_than_the_one_asked_for_is_refused(rig: MachineRig) -> None:
    # the desired state names 2.0.0 but the sha256 (and so the bytes) are those of 0.9.0's bundle
    rig.http.files[f"{FLEET}/bundles/m-2.0.0.edgepkg"] = rig.bundles.paths["0.9.0"]
    wire = desired(rig.bundles.fleet_key, rig.bundles.paths["0.9.0"], "/bundles/m-2.0.0.edgepkg", version="2.0.0")
    doctored = rig.parse(wire)
    rig.machine.begin(doctored, doctored.models[0])
    rec = rig.machine.run_until_idle()
    assert rec.reason == "the bundle is m@0.9.0, the desired state asks for m@2.0.0"
    assert rig.chain(rec)[-2:] == ["failed", "idle"]


def test_an_older_version_is_refused_unless_the_fleet_asks_for_a_rollback(rig: MachineRig) -> None:
    rec = rig.update("0.9.0")
    assert rec.reason == ("m@0.9.0 is older than the committed 1.0.0: anti-rollback refuses it (the fleet must ask "
                          "for this exact version as a rollback)")
    assert rig.serving() == "1.0.0"
    rec = rig.update("0.9.0", rollback=True)
    assert rec.committed == {"m": "0.9.0"} and rig.serving() == "0.9.0"


def test_anti_rollback_compares_with_the_last_committed_version_first(rig: MachineRig) -> None:
    rec = rig.records.load()
    rec.committed = {"m": "2.1.0"}    # committed earlier; the pointer was moved back by hand since
    rig.records.save(rec)
    rec = rig.update("2.0.0")
    assert rec.reason is not None and "older than the committed 2.1.0" in rec.reason


def test_a_desired_state_that_expired_during_the_update_is_refused_before_the_switch(rig: MachineRig) -> None:
    rec = rig.update("2.0.0", expires_in=-5)
    assert rig.chain(rec) == ["downloading", "verifying", "failed", "idle"]
    assert rec.reason == "the desired state expired while the update was in progress"


def test_expiry_is_checked_again_at_the_switch_and_rolls_back(rig: MachineRig) -> None:
    served = rig.services.registry.get("m")
    clock = rig.use_fake_clock()
    rig.hooks[(S.SWITCHING, "enter")] = lambda: clock.__setitem__(0, clock[0] + 7200)
    rec = rig.update("2.0.0", expires_in=3600)
    assert rec.reason == "the desired state expired before the switch"
    assert rig.chain(rec)[-4:] == ["switching", "rolling_back", "failed", "idle"]
    assert rig.services.store.current("m") == "1.0.0"
    assert rig.services.registry.get("m") is served    # still serving: the old model is not reloaded


def test_a_bundle_whose_smoke_test_fails_never_serves(rig: MachineRig) -> None:
    rec = rig.update("2.1.0")
    assert rig.chain(rec) == ["downloading", "verifying", "staging", "smoke_testing", "failed", "idle"]
    assert "m@2.1.0" in rec.refused
    assert rig.serving() == "1.0.0" and rig.services.store.current("m") == "1.0.0"


def test_a_switch_resumed_after_a_restart_loads_the_staged_version_again(rig: MachineRig) -> None:
    def forget_staged() -> None:   # as after a restart: the model loaded in smoke_testing died with the process
        assert rig.ctx.staged is not None
        rig.ctx.staged.model.close()
        rig.ctx.staged = None
    rig.hooks[(S.SWITCHING, "enter")] = forget_staged
    rec = rig.update("2.0.0")
    assert rec.committed == {"m": "2.0.0"} and rig.serving() == "2.0.0"
    assert rig.ctx.staged is None


def test_failed_deletes_the_download_and_its_partial_file_and_closes_the_staged_model(rig: MachineRig) -> None:
    part: list[Path] = []

    def leave_a_part() -> None:
        bundle = rig.ctx.bundle_path(rig.records.load())
        part.append(bundle.with_name(bundle.name + ".part"))
        part[0].write_bytes(b"half")
    rig.hooks[(S.FAILED, "enter")] = leave_a_part
    rig.ctx.staged = rig.services.load_model("m", "1.0.0")   # a model staged when the failure came
    closed = rig.ctx.staged
    rec = rig.update("2.2.0")
    assert rec.refused["m@2.2.0"].startswith("the bundle is built for target")
    assert rig.ctx.staged is None
    assert not part[0].exists() and downloads(rig) == []
    with pytest.raises(Exception):   # noqa: B017 -- closed: the runtime session is gone
        closed.model.predict({"x": [[0.0, 0.0, 0.0, 0.0]]})


def test_a_failure_without_a_reason_is_recorded_as_failed(rig: MachineRig) -> None:
    rec = rig.records.load()
    rec.state, rec.model, rec.target_version, rec.reason = S.FAILED, "m", "9.9.9", None
    rig.records.save(rec)
    assert rig.machine.run_until_idle().refused == {"m@9.9.9": "failed"}


def test_a_rollback_that_fails_is_retried_after_a_growing_pause(rig: MachineRig,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = rig.services.store
    real = store.set_current
    calls: list[str] = []

    def flaky(name: str, version: str) -> None:
        calls.append(version)
        if version == "1.0.0" and calls.count("1.0.0") <= 2:
            raise UpdateError("disk full")
        real(name, version)
    monkeypatch.setattr(store, "set_current", flaky)
    rig.health.live["2.0.0"] = VersionHealth(10, 9, 1.0, 1.0)     # unhealthy: roll back
    rec = rig.update("2.0.0")
    assert rig.chain(rec)[-5:] == ["rolling_back", "rolling_back", "rolling_back", "failed", "idle"]
    assert rig.sleeps == [0.0, 1.0, 2.0]
    assert rig.serving() == "1.0.0" and store.current("m") == "1.0.0"


def test_rolling_back_a_first_install_stops_serving_the_model(tmp_path: Path, bundles: Bundles,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch)
    r.health.live["2.0.0"] = VersionHealth(10, 9, 1.0, 1.0)
    rec = r.update("2.0.0")
    assert rec.previous_version is None
    assert r.chain(rec)[-3:] == ["rolling_back", "failed", "idle"]
    assert r.services.registry.names() == []
    r.services.registry.close()


def test_the_committed_version_itself_may_be_installed_again(rig: MachineRig) -> None:
    rec = rig.records.load()
    rec.committed = {"m": "2.0.0"}    # committed earlier; the pointer was moved back by hand since
    rig.records.save(rec)
    assert rig.update("2.0.0").committed == {"m": "2.0.0"}
    assert rig.serving() == "2.0.0"


@pytest.mark.parametrize(("state", "reason"), [
    (S.VERIFYING, "the desired state expired while the update was in progress"),
    (S.SWITCHING, "the desired state expired before the switch"),
])
def test_a_desired_state_is_expired_at_its_expiry_time(rig: MachineRig, state: S, reason: str) -> None:
    clock = rig.use_fake_clock()
    wire = rig.wire("2.0.0", expires_in=3600)
    expires = rig.parse(wire).expires
    rig.hooks[(state, "enter")] = lambda: clock.__setitem__(0, expires)
    state_doc = rig.parse(wire)
    rig.machine.begin(state_doc, state_doc.models[0])
    rec = rig.machine.run_until_idle()
    assert rec.reason == reason
    assert rig.serving() == "1.0.0"


def test_a_commit_resumed_after_its_clean_up_ran_finishes_as_done(rig: MachineRig) -> None:
    def clean_up_already_ran() -> None:
        rig.ctx.bundle_path(rig.records.load()).unlink()
    rig.hooks[(S.COMMITTED, "enter")] = clean_up_already_ran
    rec = rig.update("2.0.0")
    assert rec.history[-1][1:] == [S.COMMITTED, "done", S.IDLE] and rec.reason is None


def test_prune_never_deletes_the_current_version_even_the_oldest(tmp_path: Path, bundles: Bundles,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, keep_versions=2)
    r.install("1.0.0")
    r.install("2.0.0")
    rec = r.update("0.9.0", rollback=True)     # the fleet sends it back
    assert rec.committed == {"m": "0.9.0"} and rec.reason is None
    assert rec.history[-1][1:] == [S.COMMITTED, "done", S.IDLE]          # the clean-up did not fail
    assert r.services.store.versions("m") == ["0.9.0", "1.0.0", "2.0.0"]
    assert r.services.store.current("m") == "0.9.0" and r.serving() == "0.9.0"
    r.services.registry.close()


def test_the_refusal_names_every_target_the_device_runs(tmp_path: Path, bundles: Bundles,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch, targets=["x86-cpu", "jetson-orin"])
    r.install("1.0.0")
    rec = r.update("2.2.0")
    assert rec.reason == "the bundle is built for target arm64-cpu; this device runs x86-cpu, jetson-orin"
    r.services.registry.close()
