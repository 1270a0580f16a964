"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a real
fleet server on a free port: it logs in with a token, shows the enrolled devices, every page loads
without console errors, and a screenshot of each page is kept as a test artifact."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.server import FleetServer, ServerConfig
from tests.support.services import free_port, require

CHROMIUM = os.environ.get("EDGEML_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@dataclass
class LiveFleet:
    url: str
    admin: str
    server: FleetServer

    def call(self, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token or self.admin}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def live_fleet(tmp_path: Path) -> Iterator[LiveFleet]:
    """A fleet server with a real HTTP listener (uvicorn in a thread), so the browser talks real HTTP."""
    import uvicorn

    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin = create_first_admin(db)
    server = FleetServer(ServerConfig(data_dir=tmp_path / "data", db=db, broker="mqtt://127.0.0.1:18830"))
    server.start()
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not web.started:
            assert time.monotonic() < deadline, "the fleet server did not start listening"
            time.sleep(0.05)
        yield LiveFleet(f"http://127.0.0.1:{port}", admin, server)
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        server.stop()


def enroll(fleet: LiveFleet, name: str, installed: dict) -> str:
    r = fleet.call("POST", "/v1/enrollment-tokens", json={"group": "lab", "tags": ["cam"]})
    assert r.status_code == 201, r.text
    r = httpx.post(fleet.url + "/v1/enroll", headers={"Authorization": f"Bearer {r.json()['token']}"},
                   json={"name": name, "hardware": {"arch": "x86_64"}, "installed": installed}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["device_id"])


def artifacts_dir(tmp_path: Path) -> Path:
    """$EDGEML_TEST_ARTIFACTS/dashboard, else the clone's (git-ignored) artifacts/dashboard, for CI to keep."""
    base = os.environ.get("EDGEML_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "artifacts"
    root = Path(base) / "dashboard"
    root.mkdir(parents=True, exist_ok=True)
    return root


def playwright_or_skip():
    require(shutil.which(CHROMIUM) is not None or Path(CHROMIUM).exists(),
            f"chromium is not installed at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it)")
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        require(False, "the playwright Python package is missing: pip install -e '.[test]'")
    return playwright_api


def test_dashboard_shows_the_fleet_in_a_real_browser(live_fleet: LiveFleet, tmp_path: Path) -> None:
    playwright_api = playwright_or_skip()

    # given a fleet with three devices, two of them running a model
    names = {"cam-north": {"bundles": {"ppocr-cls": "1.0.0"}}, "cam-south": {"bundles": {"ppocr-cls": "1.0.0"}},
             "cam-dock": {"bundles": {}}}
    ids = {name: enroll(live_fleet, name, installed) for name, installed in names.items()}
    viewer = live_fleet.call("POST", "/v1/tokens", json={"name": "wallboard", "role": "viewer"}).json()["token"]
    shots = artifacts_dir(tmp_path)
    print(f"\ndashboard screenshots: {shots}")

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            outside: list[str] = []  # air-gapped: the page must not fetch anything from another host
            page.on("request", lambda r: None if r.url.startswith((live_fleet.url, "data:")) else outside.append(r.url))

            # when an operator opens the dashboard, it asks for a token first
            page.goto(live_fleet.url + "/dashboard/")
            page.wait_for_selector("#login-form", state="visible")
            # a wrong token is refused with the server's reason, and the login form stays
            page.fill("#token", "efl_" + "x" * 43)
            page.click("#login-form button")
            page.wait_for_selector("#login-error:has-text('Token refused')")
            problems.clear()  # the 401 above is expected to be logged by the browser

            # then with the admin token the devices page lists every enrolled device
            page.fill("#token", live_fleet.admin)
            page.click("#login-form button")
            page.wait_for_selector("#devices[data-loaded=true] table")
            devices_text = page.inner_text("#devices")
            for name, device_id in ids.items():
                assert name in devices_text and device_id in devices_text
            assert "ppocr-cls@1.0.0" in devices_text
            assert "Devices (3," in devices_text
            page.screenshot(path=str(shots / "fleet-devices.png"), full_page=True)

            for name in ("rollouts", "models", "audit"):
                page.click(f"nav a[data-page={name}]")
                page.wait_for_selector(f"#{name}[data-loaded=true]")
                page.screenshot(path=str(shots / f"fleet-{name}.png"), full_page=True)
            # the audit log shows the enrolments that just happened
            audit_text = page.inner_text("#audit")
            assert "device.enroll" in audit_text and ids["cam-north"] in audit_text
            assert "Could not load" not in page.content()
            assert problems == [], problems

            # a viewer token sees the fleet but is told the audit log needs an admin
            page.click("#logout")
            assert page.inner_text("#audit") == "" and page.get_attribute("#audit", "data-loaded") is None
            page.fill("#token", viewer)
            page.click("#login-form button")
            page.wait_for_selector("#audit[data-loaded=true]")
            assert "needs an admin token" in page.inner_text("#audit")
            assert outside == [], f"the dashboard fetched from outside the fleet server: {outside}"
        finally:
            browser.close()
    assert (shots / "fleet-devices.png").stat().st_size > 10_000



def store_telemetry(server: FleetServer, device_id: str, t0: datetime) -> None:
    """Telemetry windows through ingest's code path (raw rows and roll-ups): v1 and v2, one a minute for six
    minutes with nothing in the fourth (a gap), and a drift score per version."""
    from sqlalchemy import update

    from edgeml.fleet.store.rollup_models import DeviceVersion
    from edgeml.fleet.telemetry_store import Envelope, store_messages
    from edgeml.telemetry.latency import bucket_index, empty_histogram

    def entry(version: str, errors: int, ms: float) -> dict:
        latency = empty_histogram()
        latency[bucket_index(ms)] = 100
        return {"model": "cls", "version": version, "requests": 100, "errors": {"x": errors} if errors else {},
                "latency_ms": {"buckets": latency, "sum": ms * 100}, "runtime": "onnxruntime",
                "device": "CPUExecutionProvider", "fallback": False}

    with server.store.session() as session:
        store_messages(session, [
            Envelope(device_id, i + 1, t0 + timedelta(minutes=i), "telemetry",
                     {"window_s": 60.0, "models": [entry("1.0.0", 0, 3.0 + i), entry("2.0.0", 2, 9.0 + i)]})
            for i in range(6) if i != 3])
        # drift needs the bundle's reference statistics (tests/fleet/test_drift_e2e.py); the roll-up holds a
        # score here as ingest would have stored it
        for version, score in (("1.0.0", 0.02), ("2.0.0", 0.3)):
            session.execute(update(DeviceVersion).where(DeviceVersion.device_id == device_id,
                                                        DeviceVersion.version == version).values(drift=score))


def test_rollout_waves_and_version_charts_render(live_fleet: LiveFleet, tmp_path: Path, signing_key,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    playwright_api = playwright_or_skip()
    from edgeml.fleet.cli.rollouts import _print_status
    from tests.support.bundles import make_bundle
    from tests.support.tiny_models import tiny_cnn

    # given two devices with telemetry for v1 and v2 of a model, and a rollout of v2
    devices = [enroll(live_fleet, name, {"bundles": {"cls": "1.0.0"}}) for name in ("cam-a", "cam-b")]
    # cam-b has since committed v2 (ingest keeps the top-level {model: version} entries current)
    with live_fleet.server.store.session() as session:
        from edgeml.fleet.store.models import Device

        row = session.get(Device, devices[1])
        assert row is not None
        row.installed = {**row.installed, "cls": "2.0.0"}
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    for device in devices:
        store_telemetry(live_fleet.server, device, t0)
    r = live_fleet.call("POST", "/v1/keys", json={"name": "ci", "public_pem": signing_key.public_pem().decode()})
    assert r.status_code == 201, r.text
    model = tiny_cnn(tmp_path / "cnn.onnx")
    for version in ("1.0.0", "2.0.0"):
        bundle = make_bundle(tmp_path / f"cls-{version}.edgepkg", signing_key, model, name="cls", version=version)
        r = live_fleet.call("POST", "/v1/bundles", content=bundle.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    r = live_fleet.call("POST", "/v1/rollouts", json={"bundle": "cls@2.0.0", "group": "lab", "waves": [50, 100]})
    assert r.status_code == 201, r.text
    rollout = r.json()["id"]
    mark_first_wave_installed(live_fleet.server, rollout)
    shots = artifacts_dir(tmp_path)

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(live_fleet.url + "/dashboard/#rollouts")
            page.fill("#token", live_fleet.admin)
            page.click("#login-form button")

            # then the rollout shows with its waves, thresholds and decisions
            page.wait_for_selector("#rollouts[data-loaded=true]")
            text = page.inner_text("#rollouts")
            assert f"{rollout} — cls@2.0.0" in text, text
            assert "Wave" in text and "max_error_rate" in text and "rollout.create" in text, text
            assert page.locator(f"[data-rollout='{rollout}'] table tbody tr").count() == 2  # 50 %, 100 %
            # the wave has had no traffic since it started (the telemetry is older): no latency, not 0.0 ms
            doc = live_fleet.call("GET", f"/v1/rollouts/{rollout}").json()
            assert doc["live"]["requests"] == 0 and doc["live"]["p50_ms"] is None, doc["live"]
            _print_status(doc)   # what `edgeml-fleet rollout status` prints
            [gate] = [line for line in capsys.readouterr().out.splitlines() if "max_latency_regression" in line]
            assert gate.split()[-1] == "-", gate
            live_text = page.inner_text(f"[data-rollout='{rollout}'] .live")
            assert "p50_ms: no data" in live_text and "0.0" not in live_text.replace("error_rate: 0.000", ""), live_text
            page.screenshot(path=str(shots / "rollouts.png"), full_page=True)

            # the devices page says which backend served the model (from the newest window)
            page.click("nav a[data-page=devices]")
            page.wait_for_selector("#devices[data-loaded=true] table")
            rows = page.locator("#devices tbody tr")
            assert "onnxruntime/CPUExecutionProvider" in rows.nth(0).inner_text()
            assert "cls@1.0.0" in rows.nth(0).inner_text() and "cls@2.0.0" in rows.nth(1).inner_text()

            # and the models page draws latency, error rate and drift per version from the stored history
            page.click("nav a[data-page=models]")
            check_version_charts(page)
            page.screenshot(path=str(shots / "models.png"), full_page=True)
            # and the history survives a reload: it comes from the fleet's roll-ups, not the page's memory
            page.reload()
            check_version_charts(page)
            assert problems == [], problems
        finally:
            browser.close()


def mark_first_wave_installed(server: FleetServer, rollout: str) -> None:
    """As if the first wave's device had installed v2 (no agent here), so the rollout shows live figures."""
    from sqlalchemy import select

    from edgeml.fleet.store.models import RolloutDevice

    deadline = time.monotonic() + 20
    while True:
        with server.store.session() as session:
            first = session.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout,
                                                                RolloutDevice.wave == 0)).all()
            for member in first:
                member.state = "installed"
            if first:
                return
        assert time.monotonic() < deadline, "the controller did not pick the first wave's devices"
        time.sleep(0.2)


def check_version_charts(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#models[data-loaded=true] svg")
    charts = page.locator("#models [data-model=cls] svg")
    assert charts.count() == 3
    latency, errors, drift = (charts.nth(i) for i in range(3))
    # five minutes with data per version (devices merged), the missing fourth minute a gap: two line
    # segments per version, and no point drawn for it (nothing at 0 ms)
    for chart in (latency, errors):
        assert chart.locator("circle").count() == 10
        assert chart.locator("polyline").count() == 4
        for version in ("cls@1.0.0", "cls@2.0.0"):
            assert chart.locator(f"polyline[data-series='{version}']").count() == 2
    assert drift.locator("circle").count() == 2   # the current score of each version
    assert "cls@2.0.0" in page.inner_text("#models .legend")
