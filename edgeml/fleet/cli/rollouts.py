"""``edgeml-fleet rollout create|status|list|pause|resume|abort``: staged rollouts gated on telemetry."""

from __future__ import annotations

import re
import time
from typing import Any

import click

from edgeml.errors import ConfigError
from edgeml.fleet.cli.output import client, echo_json, json_option, table
from edgeml.fleet.rollouts.plan import Selector, parse_waves

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``10m`` → 600.0; ``90s``, ``1.5h``, plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"durations look like 90s, 10m or 1h (got {text!r})")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


SUMMARY_COLUMNS = [("id", "rollout"), ("bundle", "bundle"), ("state", "state"), ("wave", "wave"), ("waves", "of"),
                   ("devices", "devices"), ("counts", "device states"), ("reason", "reason")]


@click.group()
def rollout() -> None:
    """Staged rollouts gated on the devices' telemetry."""


@rollout.command("create")
@click.argument("bundle")
@click.option("--select", "select", multiple=True, help="group=NAME and/or tag=NAME (default: every device)")
@click.option("--waves", default="1,10,50,100", show_default=True, help="cumulative percentages of the devices")
@click.option("--max-error-rate", type=float, default=0.05, show_default=True)
@click.option("--max-latency-regression", type=float, default=0.5, show_default=True,
              help="p50 may grow by this fraction of the previous version's p50")
@click.option("--min-shadow-agreement", type=float, default=None, help="judged on the devices (shadow runs)")
@click.option("--max-drift", type=float, default=None, help="PSI of the inputs against the bundle's reference")
@click.option("--min-requests", type=int, default=0, show_default=True, help="traffic needed to judge a wave")
@click.option("--min-reporting", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="share of a wave's installed devices that must send telemetry of the new version before it is "
                   "judged (at least one: a wave never passes on no data)")
@click.option("--observe", type=Duration(), default="10m", show_default=True, help="observation window per wave")
@click.option("--wave-timeout", type=Duration(), default="30m", show_default=True,
              help="devices that have not installed by then are counted offline")
@click.option("--probation", type=Duration(), default=None, help="the agents' probation (default: their own)")
@click.option("--on-failure", type=click.Choice(["pause", "abort"]), default="pause", show_default=True)
@json_option
def rollout_create(bundle: str, select: tuple[str, ...], waves: str, max_error_rate: float,
                   max_latency_regression: float, min_shadow_agreement: float | None, max_drift: float | None,
                   min_requests: int, min_reporting: float, observe: float, wave_timeout: float,
                   probation: float | None, on_failure: str, as_json: bool) -> None:
    """Roll BUNDLE (name@version or sha256 id) out in waves."""
    selector = Selector.parse(select)
    with client() as fleet:
        created = fleet.create_rollout(
            bundle, group=selector.group, tag=selector.tag, waves=parse_waves(waves), max_error_rate=max_error_rate,
            max_latency_regression=max_latency_regression, min_shadow_agreement=min_shadow_agreement,
            max_drift=max_drift, min_requests=min_requests, min_reporting=min_reporting, observe_s=observe,
            wave_timeout_s=wave_timeout, on_failure=on_failure, probation_s=probation)
    row = created.raw
    if as_json:
        echo_json(row)
    else:
        click.echo(f"rollout {row['id']}: {row['bundle']} to {row['devices']} devices ({selector.describe()}) "
                   f"in {row['waves']} waves; follow it with 'edgeml-fleet rollout status {row['id']} --watch'")


@rollout.command("list")
@click.option("--state", default=None, help="running, paused, aborting, aborted or completed")
@json_option
def rollout_list(state: str | None, as_json: bool) -> None:
    """Rollouts, newest first."""
    with client() as fleet:
        rows = [r.raw for r in fleet.list_rollouts(state)]
    table(rows, SUMMARY_COLUMNS, "rollouts", as_json)


WAVE_COLUMNS = [("wave", "wave"), ("percent", "%"), ("devices", "devices"), ("state", "state"),
                ("counts", "device states")]
# which live figure of the current wave each gate is judged on
_GATE_FIGURE = {"max_error_rate": "error_rate", "max_drift": "drift", "max_latency_regression": "p50_ms",
                "min_requests": "requests", "min_reporting": "devices"}
_DECISION_DETAILS = ("wave", "reasons", "devices", "outcome", "reverted", "installed", "reason")


def _print_status(doc: dict[str, Any]) -> None:
    table([doc], SUMMARY_COLUMNS, f"rollout {doc['id']}", False)
    table(doc["wave_list"], WAVE_COLUMNS, "waves", False)
    live = doc.get("live") or {}
    gates = [{"gate": k, "limit": v, "live": live.get(_GATE_FIGURE.get(k, ""))}
             for k, v in doc["gates"].items() if v is not None]
    table(gates, [("gate", "gate"), ("limit", "limit"), ("live", "live (current wave)")],
          f"gates (observe {doc['observe_s']:g} s, wave timeout {doc['wave_timeout_s']:g} s, "
          f"on failure: {doc['on_failure']})", False)
    decisions = [{"at": d["at"], "action": d["action"],
                  "details": {k: v for k, v in d["details"].items() if k in _DECISION_DETAILS}}
                 for d in doc["decisions"][-12:]]
    table(decisions, [("at", "time"), ("action", "decision"), ("details", "details")], "decisions (audit log)", False)


@rollout.command("status")
@click.argument("rollout_id")
@click.option("--watch", is_flag=True, help="refresh every --interval seconds until it ends (Ctrl-C stops)")
@click.option("--interval", type=float, default=2.0, show_default=True)
@json_option
def rollout_status(rollout_id: str, watch: bool, interval: float, as_json: bool) -> None:
    """Waves, per-state device counts, the gate figures and the decisions taken."""
    with client() as fleet:
        while True:
            doc = fleet.get_rollout(rollout_id).raw
            if as_json:
                echo_json(doc)
            else:
                if watch:
                    click.clear()
                _print_status(doc)
            if not watch or doc["state"] in ("completed", "aborted"):
                return
            time.sleep(interval)


def _change(rollout_id: str, action: str, as_json: bool, reason: str | None = None) -> None:
    with client() as fleet:
        changed = (fleet.pause_rollout(rollout_id) if action == "pause" else
                   fleet.resume_rollout(rollout_id) if action == "resume" else
                   fleet.abort_rollout(rollout_id, reason or "aborted by an operator"))
    row = changed.raw
    if as_json:
        echo_json(row)
    else:
        click.echo(f"rollout {row['id']} is now {row['state']}")


@rollout.command("pause")
@click.argument("rollout_id")
@json_option
def rollout_pause(rollout_id: str, as_json: bool) -> None:
    """Stop advancing (devices keep what they have)."""
    _change(rollout_id, "pause", as_json)


@rollout.command("resume")
@click.argument("rollout_id")
@json_option
def rollout_resume(rollout_id: str, as_json: bool) -> None:
    """Continue a paused rollout; its current wave is observed again."""
    _change(rollout_id, "resume", as_json)


@rollout.command("abort")
@click.argument("rollout_id")
@click.option("--reason", default="aborted by an operator", show_default=True)
@json_option
def rollout_abort(rollout_id: str, reason: str, as_json: bool) -> None:
    """Stop and send every device that got the new version back to its previous one."""
    _change(rollout_id, "abort", as_json, reason)
