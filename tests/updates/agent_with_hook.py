"""Test-only launcher: the normal ``edgeml-agent run``, with the update machine's ``on_state`` hook
installed so a crash test can SIGKILL the agent at a chosen point inside a state.

    python -m tests.updates.agent_with_hook --fault verifying:enter --config agent.toml

``--fault STATE:POINT`` stops (sleeps) the first time the machine reaches POINT in STATE: ``enter``
(the state's side effect is about to run), ``mid`` (switching: ``current`` points at the new version,
the registry still serves the old one) or ``half`` (downloading: at least half of the bundle, and not
all of it, is on disk). Before sleeping it writes ``<data_dir>/updates/holding`` with the fault spec,
which is what the test waits for.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from edgeml.protocol import UpdateState
from edgeml_agent.cli import serve
from edgeml_agent.config import load_config
from edgeml_agent.services import StateHook

log = logging.getLogger("edgeml_agent.updates")


def hold_at(state: str, point: str, data_dir: Path) -> StateHook:
    def hook(at: UpdateState, where: str) -> None:
        if at != state or not _reached(point, where):
            return
        log.warning("test hook: holding in %s (%s)", state, point)
        (data_dir / "updates" / "holding").write_text(f"{state}:{point}\n")
        time.sleep(3600)   # until the test kills the process

    return hook


def _reached(point: str, where: str) -> bool:
    if point != "half":
        return where == point
    if not where.startswith("bytes="):
        return False
    have, total = (int(n) for n in where.removeprefix("bytes=").split("/"))
    return total // 2 <= have < total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", required=True, help="STATE:POINT")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    state, _, point = args.fault.partition(":")
    hook = hold_at(state, point or "enter", load_config(args.config).data_dir)
    return serve(args.config, on_state=hook)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
