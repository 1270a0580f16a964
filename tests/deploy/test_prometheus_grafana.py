"""deploy/prometheus and deploy/grafana against the real thing: the alert rules pass ``promtool check rules``
and their unit tests (each alert fires on a synthetic series), every PromQL query of the Grafana dashboard
parses, and every metric name either uses is one a real fleet server's ``/metrics`` emits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.conftest import make_fleet
from tests.fleet.seeded_fleet import seed, utcnow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "edgeml-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "edgeml-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "edgeml-fleet.json"
METRIC_NAME = re.compile(r"\bedgeml_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not installed (apt-get install prometheus; scripts/test.sh does it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panel_exprs() -> dict[str, str]:
    return {f"{p['title']}/{t['refId']}": t["expr"] for p in _dashboard()["panels"] for t in p["targets"]}


def test_alert_rules_pass_promtool_and_each_fires_in_its_unit_test(promtool: str) -> None:
    assert "SUCCESS: 4 rules found" in _run([promtool, "check", "rules", RULES.name], RULES.parent)
    _run([promtool, "test", "rules", RULE_TESTS.name], RULE_TESTS.parent)
    # every alert has a unit test that expects it to fire
    tested = {a["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert tested == set(_rule_exprs())


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    # promtool parses PromQL only in rule files: each panel query becomes a recording rule. Grafana's
    # template variables become what "All" selects.
    rules = [{"record": f"check:q{i}", "expr": expr.replace("$model", ".*").replace("$version", ".*")}
             for i, expr in enumerate(_panel_exprs().values())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _run([promtool, "check", "rules", path.name], tmp_path)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The sample names a fleet server with telemetry, a capture and a rollout serves on /metrics."""
    tmp = tmp_path_factory.mktemp("fleet")
    for fleet in make_fleet(tmp / "data", f"sqlite:///{tmp / 'fleet.db'}"):
        seed(fleet, utcnow())
        r = fleet.call("GET", "/metrics")
        assert r.status_code == 200, r.text
        yield {s.name for f in text_string_to_metric_families(r.text) for s in f.samples}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_queried_is_one_the_fleet_emits(source: str, emitted: set[str]) -> None:
    exprs = _rule_exprs() if source == "rules" else _panel_exprs()
    for where, expr in exprs.items():
        names = set(METRIC_NAME.findall(expr))
        assert names, f"{where}: queries no edgeml metric: {expr}"
        assert names <= emitted, f"{where}: {sorted(names - emitted)} not on /metrics (it has {sorted(emitted)})"


def test_dashboard_is_structurally_valid() -> None:
    doc = _dashboard()
    panels = doc["panels"]
    assert doc["uid"] and doc["title"] and panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in doc["templating"]["list"]}
    for p in panels:
        assert p["datasource"]["type"] == "prometheus", p["title"]
        assert p["datasource"]["uid"].strip("${}") in variables, p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() and t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        if p["type"] == "timeseries":   # no data is a gap, never drawn across as if it were there
            assert p["fieldConfig"]["defaults"]["custom"]["spanNulls"] is False, p["title"]
    # the panels the issue asks for, per model version
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("requests", "error", "p50", "p99", "drift", "devices", "captures", "rollout"):
        assert word in titles, word
