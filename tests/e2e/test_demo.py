"""The README's main command, run as CI runs it: the whole loop with a shortened observation window.

It starts real processes (the compiler three times, a fleet server with its embedded broker, three
agents) and must leave none behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.real_models import CACHE

ROOT = Path(__file__).resolve().parents[2]


def leftover_processes(marker: str) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline and proc.pid != os.getpid():
            found.append(f"{proc.pid}: {cmdline}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_demo_rolls_out_v2_and_stops_the_bad_v3(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    summary_path = tmp_path / "summary.json"
    # when the demo runs to the end (the wheel cache is shared with the real-model tests)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fleet_demo.py"), "--exit", "--observe", "3", "--probation", "4",
         "--timeout", "150", "--workdir", str(work), "--cache", str(CACHE), "--summary-json", str(summary_path)],
        capture_output=True, text=True, timeout=380, cwd=ROOT)
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"demo failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    summary = json.loads(summary_path.read_text())

    # then v2 completed its waves and all three agents serve it
    assert summary["v2"]["state"] == "completed"
    assert summary["v2"]["counts"] == {"installed": 3}
    assert [w["counts"] for w in summary["v2"]["wave_list"]] == [{"installed": 1}] * 3
    # and the bad v3 was stopped in its first wave: one device tried it and went back to v2
    assert summary["v3"]["state"] == "aborted"
    assert summary["v3"]["counts"].get("reverted") == 1 and summary["v3"]["counts"].get("installed", 0) == 0
    assert summary["versions"] == {"camera-1": "2.0.0", "camera-2": "2.0.0", "camera-3": "2.0.0"}
    assert "Summary" in done.stdout and "/dashboard/" in done.stdout

    # and the telemetry is stored in the fleet's database (read directly, not through the demo)
    with sqlite3.connect(work / "fleet" / "fleet.db") as db:
        windows = dict(db.execute("SELECT version, SUM(requests) FROM model_windows GROUP BY version").fetchall())
        errors = dict(db.execute("SELECT version, SUM(errors) FROM model_windows GROUP BY version").fetchall())
        devices = {row[0] for row in db.execute("SELECT DISTINCT device_id FROM model_windows")}
        updates = db.execute("SELECT COUNT(*) FROM device_events WHERE kind = 'update'").fetchone()[0]
    assert windows.get("1.0.0", 0) > 0 and windows.get("2.0.0", 0) > 0
    assert errors.get("3.0.0", 0) > 0 and errors.get("2.0.0", 0) == 0
    assert devices == set(summary["devices"].values())
    assert updates > 0

    # and nothing it started is still running
    assert leftover_processes(str(work)) == []
