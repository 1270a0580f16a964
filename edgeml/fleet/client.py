"""The Python client of the fleet server: what a CI pipeline, a notebook or the ``edgeml-fleet`` CLI does.

    from edgeml.fleet import Client

    with Client() as fleet:                       # URL + token: arguments, env, or 'edgeml-fleet login'
        bundle = fleet.push_bundle("cls-2.0.0.edgepkg")
        ro = fleet.create_rollout(bundle.ref, group="canary", waves=[100], max_error_rate=0.02, observe_s=300)
        done = fleet.wait_rollout(ro.id, timeout=3600)   # RolloutFailed (with the gate figures) if a gate fails

Every method is one or a few API calls (``edgeml/fleet/api/*.py``) and answers typed records
(:mod:`edgeml.fleet.sdk.records`, the server's JSON kept as ``raw``). Errors derive from
:class:`edgeml.errors.FleetError` by HTTP status (:mod:`edgeml.fleet.sdk.http`); reads are retried.
Admin operations (tokens, keys) answer the server's JSON as dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edgeml.fleet.sdk.config import ClientConfig, config_path
from edgeml.fleet.sdk.http import FleetHttp, Retry
from edgeml.fleet.sdk.records import AuditEntry, Bundle, Capture, Device, Rollout, RolloutStatus, VersionHealth
from edgeml.fleet.sdk.waiting import Polling, wait

__all__ = ["Client", "ClientConfig", "FleetClient", "config_path"]


def _seg(value: str) -> str:
    """One path segment: a ref like ``name@1.0.0`` stays readable, a '/' or '?' cannot change the route."""
    return quote(value, safe="@+")


class Client:
    """Typed access to one fleet server (see the module docstring). Close it, or use it as a context manager."""

    def __init__(self, url: str | None = None, token: str | None = None, *, config_file: Path | None = None,
                 timeout: float = 30.0, retry: Retry | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = ClientConfig.resolve(url, token, path=config_file)
        self.http = FleetHttp(self.config, timeout=timeout, retry=retry, transport=transport)

    @classmethod
    def from_config(cls, config: ClientConfig, **kwargs: Any) -> Client:
        return cls(config.url, config.token, **kwargs)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def whoami(self) -> dict[str, Any]:
        """The token's name and role (``viewer``, ``deployer``, ``admin``)."""
        return dict(self.http.get("/v1/whoami"))

    # -- bundles ----------------------------------------------------------------------------------------
    def push_bundle(self, path: str | Path) -> Bundle:
        """Upload a signed ``.edgepkg`` (the server checks its signature); the same bytes again are a no-op."""
        return Bundle.from_json(self.http.upload("/v1/bundles", Path(path)))

    def list_bundles(self, name: str | None = None) -> list[Bundle]:
        return [Bundle.from_json(b) for b in self.http.get("/v1/bundles", name=name)]

    def get_bundle(self, ref: str) -> Bundle:
        """One bundle by sha256 id or ``name@version``, with its manifest, fidelity and benchmark reports."""
        return Bundle.from_json(self.http.get(f"/v1/bundles/{_seg(ref)}"))

    def delete_bundle(self, ref: str) -> Bundle:
        return Bundle.from_json(self.http.delete(f"/v1/bundles/{_seg(ref)}"))

    def download_bundle(self, ref: str, dest: str | Path) -> str:
        """Write the bundle's file to ``dest``; returns the sha256 of what arrived (its id, when intact)."""
        return self.http.download(f"/v1/bundles/{_seg(ref)}/download", Path(dest))

    # -- rollouts ---------------------------------------------------------------------------------------
    def create_rollout(self, bundle: str, *, group: str | None = None, tag: str | None = None,
                       waves: Sequence[int] = (1, 10, 50, 100), max_error_rate: float | None = 0.05,
                       max_latency_regression: float | None = 0.5, min_shadow_agreement: float | None = None,
                       max_drift: float | None = None, min_requests: int = 0, min_reporting: float | None = None,
                       observe_s: float = 600, wave_timeout_s: float = 1800, on_failure: str = "pause",
                       probation_s: float | None = None, **more: Any) -> Rollout:
        """Roll ``bundle`` (``name@version`` or sha256 id) out to the devices of ``group`` and/or ``tag`` (every
        device when neither) in cumulative-percentage ``waves``. The gate thresholds are the API's own
        (``None`` turns a gate off; ``min_reporting``, the share of a wave's devices that must report before it
        is judged, is the server's default 0.5 unless given); ``more`` passes fields a newer server takes."""
        body = {"bundle": bundle, "group": group, "tag": tag, "waves": list(waves), "max_error_rate": max_error_rate,
                "max_latency_regression": max_latency_regression, "min_shadow_agreement": min_shadow_agreement,
                "max_drift": max_drift, "min_requests": min_requests, "observe_s": observe_s,
                "wave_timeout_s": wave_timeout_s, "on_failure": on_failure, "probation_s": probation_s, **more}
        if min_reporting is not None:
            body["min_reporting"] = min_reporting
        return Rollout.from_json(self.http.post("/v1/rollouts", body))

    def list_rollouts(self, state: str | None = None) -> list[Rollout]:
        """Newest first; ``state``: running, paused, aborting, aborted or completed."""
        return [Rollout.from_json(r) for r in self.http.get("/v1/rollouts", state=state)]

    def get_rollout(self, rollout_id: str) -> RolloutStatus:
        """Waves, device states, live gate figures of the current wave, and every decision with its figures."""
        return RolloutStatus.from_json(self.http.get(f"/v1/rollouts/{_seg(rollout_id)}"))

    def wait_rollout(self, rollout_id: str, timeout: float, *, polling: Polling | None = None,
                     on_status: Callable[[RolloutStatus], None] | None = None) -> RolloutStatus:
        """Block until the rollout completes and return its final status (``results``: each wave's gate
        figures). Raises :class:`~edgeml.errors.RolloutFailed` when a gate stops it or it is aborted (the
        message names the gate and carries the figures), :class:`~edgeml.errors.RolloutTimeout` after
        ``timeout`` seconds. ``on_status`` sees every status polled (progress output)."""
        return wait(lambda: self.get_rollout(rollout_id), rollout_id, timeout, polling=polling or Polling(),
                    on_status=on_status)

    def pause_rollout(self, rollout_id: str) -> Rollout:
        return Rollout.from_json(self.http.post(f"/v1/rollouts/{_seg(rollout_id)}/pause"))

    def resume_rollout(self, rollout_id: str) -> Rollout:
        return Rollout.from_json(self.http.post(f"/v1/rollouts/{_seg(rollout_id)}/resume"))

    def abort_rollout(self, rollout_id: str, reason: str = "aborted by an operator") -> Rollout:
        """Stop it and send every device that got the new version back to its previous one."""
        return Rollout.from_json(self.http.post(f"/v1/rollouts/{_seg(rollout_id)}/abort", {"reason": reason}))

    # -- health, devices, audit -------------------------------------------------------------------------
    def get_health(self, minutes: float = 10.0, *, model: str | None = None,
               version: str | None = None) -> list[VersionHealth]:
        """Per model version over the last ``minutes``: devices, requests, error rate, p50/p95, drift."""
        rows = [VersionHealth.from_json(h) for h in self.http.get("/v1/health", minutes=minutes)]
        return [h for h in rows if (model is None or h.model == model) and (version is None or h.version == version)]

    def get_version_health(self, model: str, version: str, minutes: float = 10.0) -> VersionHealth | None:
        """One version's figures, None when no device reported it in the window."""
        return next(iter(self.get_health(minutes, model=model, version=version)), None)

    def list_devices(self, *, group: str | None = None, tag: str | None = None, online: bool | None = None,
                     include_revoked: bool = False, fields: Sequence[str] | None = None,
                     page_size: int = 500) -> Iterator[Device]:
        """Every matching device in enrolment order, fetched a page at a time where the server pages
        (``fields``: only these of each device; the others keep their defaults)."""
        for row in self.http.pages("/v1/devices", limit=page_size, group=group, tag=tag, online=online,
                                   include_revoked=include_revoked or None,
                                   fields=",".join(fields) if fields else None):
            yield Device.from_json(row)

    def get_device(self, device_id: str) -> Device:
        return Device.from_json(self.http.get(f"/v1/devices/{_seg(device_id)}"))

    def update_device(self, device_id: str, *, add_tags: Sequence[str] = (), remove_tags: Sequence[str] = (),
                      group: str | None = None, name: str | None = None) -> Device:
        """Tags added/removed, a new group (``""`` takes it out of its group) or name."""
        body: dict[str, Any] = {"add_tags": list(add_tags), "remove_tags": list(remove_tags)}
        if group is not None:
            body["group"] = group
        if name is not None:
            body["name"] = name
        return Device.from_json(self.http.patch(f"/v1/devices/{_seg(device_id)}", body))

    def revoke_device(self, device_id: str) -> Device:
        return Device.from_json(self.http.post(f"/v1/devices/{_seg(device_id)}/revoke"))

    def get_device_telemetry(self, device_id: str, minutes: float = 60.0) -> dict[str, Any]:
        """One device's recent telemetry windows, drift and events, as the server answers them."""
        return dict(self.http.get(f"/v1/telemetry/{_seg(device_id)}", minutes=minutes))

    def list_audit(self, *, actor: str | None = None, action: str | None = None, target: str | None = None,
              since: str | None = None, until: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first (admin token). ``action`` is exact, or a prefix ending in '.' (``rollout.``)."""
        rows = self.http.get("/v1/audit", actor=actor, action=action, target=target, since=since, until=until,
                             limit=limit)
        return [AuditEntry.from_json(r) for r in rows]

    # -- captured samples ------------------------------------------------------------------------------
    def list_captures(self, *, model: str | None = None, trigger: str | None = None, since: str | None = None,
                      device: str | None = None, limit: int | None = None) -> Iterator[Capture]:
        """Newest first, at most ``limit`` (all when None), page by page. ``since``: 30m, 12h, 1d or ISO time."""
        size = min(limit or 500, 500)
        rows = self.http.pages("/v1/captures", limit=size, items="captures", model=model, trigger=trigger,
                               since=since, device=device)
        for n, row in enumerate(rows):
            if limit is not None and n >= limit:
                return
            yield Capture.from_json(row)

    def get_capture(self, device_id: str, capture_id: str) -> Capture:
        return Capture.from_json(self.http.get(f"/v1/captures/{_seg(device_id)}/{_seg(capture_id)}"))

    def download_capture(self, device_id: str, capture_id: str, dest: str | Path) -> str:
        """The sample's .npz (``in/<input>``, ``out/<output>`` arrays) into ``dest``; returns its sha256."""
        return self.http.download(f"/v1/captures/{_seg(device_id)}/{_seg(capture_id)}/file", Path(dest))

    def delete_captures(self, *, model: str | None = None, device: str | None = None,
                        before: str | None = None) -> int:
        """Delete the samples of a model, a device and/or received before a time (audited); how many went."""
        return int(self.http.delete("/v1/captures", model=model, device=device, before=before)["deleted"])

    def get_capture_retention(self) -> dict[str, Any]:
        return dict(self.http.get("/v1/captures-retention"))

    def set_capture_retention(self, *, max_age_days: float | None = None,
                              max_per_device_model: int | None = None) -> dict[str, Any]:
        """Change how long / how many samples the fleet keeps (admin); a limit not given stays as it is."""
        current = self.get_capture_retention()
        wanted = {"max_age_days": current["max_age_days"] if max_age_days is None else max_age_days,
                  "max_per_device_model": (current["max_per_device_model"] if max_per_device_model is None
                                           else max_per_device_model)}
        return dict(self.http.put("/v1/captures-retention", wanted))

    # -- people's tokens, enrolment tokens, keys (admin) --------------------------------------------------
    def create_token(self, name: str, role: str, expires_in_s: int | None = None) -> dict[str, Any]:
        """A new API token; the answer's ``token`` is the secret, shown this once."""
        return dict(self.http.post("/v1/tokens", {"name": name, "role": role, "expires_in_s": expires_in_s}))

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(self.http.get("/v1/tokens"))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self.http.delete(f"/v1/tokens/{_seg(token_id)}"))

    def create_enrollment_token(self, *, group: str | None = None, tags: Sequence[str] = (),
                                expires_in_s: int = 3600) -> dict[str, Any]:
        """A one-time token a device enrols with (``edgeml-agent enroll --token``)."""
        body = {"group": group, "tags": list(tags), "expires_in_s": expires_in_s}
        return dict(self.http.post("/v1/enrollment-tokens", body))

    def trust_key(self, public_pem: str, name: str) -> dict[str, Any]:
        """Accept bundles signed by this Ed25519 public key (PEM text of a builder's ``.pub``)."""
        return dict(self.http.post("/v1/keys", {"name": name, "public_pem": public_pem}))

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self.http.get("/v1/keys"))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(self.http.post(f"/v1/keys/{_seg(key_id)}/revoke"))

    def untrust_key(self, key_id: str) -> dict[str, Any]:
        return dict(self.http.delete(f"/v1/keys/{_seg(key_id)}"))

    def rotate_fleet_key(self) -> dict[str, Any]:
        return dict(self.http.post("/v1/keys/fleet/rotate"))

    def get_mosquitto_files(self) -> dict[str, Any]:
        """Password and ACL file contents enforcing the fleet's topic rules on a Mosquitto broker (admin)."""
        return dict(self.http.get("/v1/broker/mosquitto"))


# The name the CLI's low-level HTTP client had: raw requests (``get``, ``post``, ``pages``…) on one server.
FleetClient = FleetHttp
