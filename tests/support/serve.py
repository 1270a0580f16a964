"""Serve bundles with a real ``edgeml-agent run`` process and call its HTTP API (tests only)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np

from edgeml.bundle import SigningKey
from tests.agent.agent_process import AgentProcess, install
from tests.support.services import free_port


def serve_and_infer(tmp: Path, key: SigningKey, bundles: Mapping[str, Path],
                    feeds: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Install every bundle (name -> .edgepkg) in one agent, start it, and run ``feeds[name]`` through
    ``POST /v1/models/{name}/infer``. Returns the outputs per model name. The agent is stopped after."""
    (tmp / "builder.pub").write_bytes(key.public_pem())
    port = free_port()
    # Image inputs exceed write_config's small body limit, and arm64-cpu bundles on this x86_64 host
    # need the agent told to run a portable model anyway.
    config = tmp / "agent.toml"
    config.write_text(f'data_dir = "{tmp / "agent-data"}"\ntrusted_keys = ["{tmp / "builder.pub"}"]\n'
                      f"[server]\nport = {port}\nmax_body_bytes = 16777216\n"
                      "[runtime]\nallow_other_arch = true\n")
    for bundle in bundles.values():
        install(config, bundle)
    results: dict[str, dict[str, np.ndarray]] = {}
    with AgentProcess(config, port, tmp / "agent.log") as agent:
        listed = httpx.get(agent.url + "/v1/models", timeout=10).json()
        assert {m["name"] for m in listed["models"]} >= set(bundles), listed
        for name in bundles:
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in feeds[name].items()})
            resp = httpx.post(f"{agent.url}/v1/models/{name}/infer", content=buf.getvalue(), timeout=60,
                              headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
            assert resp.status_code == 200, resp.text
            with np.load(io.BytesIO(resp.content)) as npz:
                results[name] = {k: npz[k] for k in npz.files}
    return results
