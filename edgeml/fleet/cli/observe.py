"""``edgeml-fleet audit``, ``telemetry`` and ``health``: what changed, how devices and models are doing."""

from __future__ import annotations

import click

from edgeml.fleet.cli.output import client, echo_json, json_option, table

AUDIT_COLUMNS = [("at", "when"), ("actor", "who"), ("action", "action"), ("target", "target"),
                 ("source", "from"), ("details", "details")]
WINDOW_COLUMNS = [("ts", "time"), ("model", "model"), ("version", "version"), ("requests", "requests"),
                  ("errors", "errors"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("runtime", "runtime"),
                  ("device", "device"), ("fallback", "fallback")]
HEALTH_COLUMNS = [("model", "model"), ("version", "version"), ("devices", "devices"),
                  ("requests_per_s", "req/s"), ("error_rate", "error rate"), ("p95_ms", "p95 ms"),
                  ("drift", "drift (PSI)")]
DRIFT_COLUMNS = [("model", "model"), ("version", "version"), ("score", "drift (PSI)")]


@click.command()
@click.option("--actor", default=None)
@click.option("--action", default=None, help="exact action, or a prefix ending in '.' (e.g. device.)")
@click.option("--target", default=None)
@click.option("--since", default=None, help="ISO time")
@click.option("--until", default=None, help="ISO time")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def audit(actor: str | None, action: str | None, target: str | None, since: str | None, until: str | None,
          limit: int, as_json: bool) -> None:
    """Who changed what, when, from where."""
    with client() as fleet:
        rows = [e.raw for e in fleet.list_audit(actor=actor, action=action, target=target, since=since, until=until,
                                                limit=limit)]
    table(rows, AUDIT_COLUMNS, "audit log", as_json)


@click.command()
@click.argument("device_id")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="look back this far")
@json_option
def telemetry(device_id: str, minutes: float, as_json: bool) -> None:
    """One device's telemetry: per-model windows, drift and recent events."""
    with client() as fleet:
        doc = fleet.get_device_telemetry(device_id, minutes)
    if as_json:
        echo_json(doc)
        return
    table(doc["windows"][:30], WINDOW_COLUMNS, f"telemetry of {device_id} (newest first)", False)
    table(doc["drift"], DRIFT_COLUMNS, "drift", False)
    events = [{"ts": e["ts"], "kind": e["kind"],
               "detail": {k: v for k, v in e["body"].items() if k != "event"}} for e in doc["events"][:20]]
    table(events, [("ts", "time"), ("kind", "event"), ("detail", "detail")], "events", False)


@click.command()
@click.option("--minutes", type=float, default=10.0, show_default=True, help="look back this far")
@json_option
def health(minutes: float, as_json: bool) -> None:
    """Fleet-wide health per model version: devices, req/s, error rate, p95 latency, drift."""
    with client() as fleet:
        rows = [h.raw for h in fleet.get_health(minutes)]
    table(rows, HEALTH_COLUMNS, f"fleet health, last {minutes:g} min", as_json)
