"""The shipped systemd unit runs the agent the way the daemon expects to be stopped."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "agent" / "edgeml-agent.service"


def parse(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current][key] = value
    return sections


def test_unit_runs_the_agent_with_restart_drain_and_hardening():
    unit = parse(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] in ("simple", "notify")
    assert service["ExecStart"].endswith("edgeml-agent run --config /etc/edgeml/agent.toml")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30          # above the default drain_timeout_s of 30 s
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert service[option] in ("yes", "strict"), option
    assert "StartLimitBurst" in unit["Unit"]           # a [Unit] option in current systemd
    assert unit["Install"]["WantedBy"] == "multi-user.target"
