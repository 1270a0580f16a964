"""``edgeml-agent``: run the daemon, install a bundle (offline), show what is installed and running."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from edgeml.bundle.keys import TrustStore
from edgeml.errors import EdgeMLError
from edgeml.jsontypes import JSON

if TYPE_CHECKING:
    from edgeml_agent.services import StateHook

CONFIG_HELP = "agent config file (TOML)"


def _fail(exc: EdgeMLError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="edgeml", prog_name="edgeml-agent")
def main() -> None:
    """edgeml device agent: serves signed model bundles behind a local HTTP API."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def run(config_path: str, log_level: str) -> None:
    """Serve every installed model until SIGTERM (then drain in-flight requests and exit 0)."""
    sys.exit(serve(config_path, log_level))


def serve(config_path: str, log_level: str = "INFO", *, on_state: StateHook | None = None) -> int:
    """``edgeml-agent run``: the daemon with its components until SIGTERM; the exit code.

    ``on_state`` is the update machine's test seam (see :mod:`edgeml_agent.services`); only test
    launchers pass it.
    """
    from edgeml_agent.components import build_components
    from edgeml_agent.config import load_config
    from edgeml_agent.daemon import Agent

    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        agent = Agent(load_config(config_path), components=build_components, on_state=on_state)
        return agent.run()
    except EdgeMLError as exc:
        _fail(exc)


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False), help="data directory (overrides the config's)")
@click.option("--trust", "trust_paths", multiple=True, type=click.Path(exists=True),
              help="also trust this public key (.pub) or directory of keys")
@click.option("--no-activate", is_flag=True, help="install only; do not make it the current version")
def install(bundle: str, config_path: str | None, data_dir: str | None, trust_paths: tuple[str, ...],
            no_activate: bool) -> None:
    """Verify BUNDLE against the trusted keys and install it into the data directory (no network)."""
    from edgeml_agent.config import load_config
    from edgeml_agent.services import trust_from_config
    from edgeml_agent.store import Store

    try:
        trust = TrustStore.from_paths(trust_paths)
        root: Path | None = Path(data_dir) if data_dir else None
        if config_path:
            config = load_config(config_path)
            root = root or config.data_dir
            for key in trust_from_config(config).values():
                trust.add(key)
        if root is None:
            raise click.UsageError("give --config or --data-dir")
        if not trust:
            raise click.UsageError("no trusted keys: give --trust KEY.pub or list trusted_keys in the config")
        verified = Store(root, trust).install(bundle, activate=not no_activate)
    except EdgeMLError as exc:
        _fail(exc)
    m = verified.manifest
    state = "installed" if no_activate else "installed and current"
    click.echo(f"{m.name}@{m.version} {state} (signed by {verified.key_id}, target {m.target_id}, runtime {m.runtime})")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False), help="data directory (overrides the config's)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(config_path: str | None, data_dir: str | None, as_json: bool) -> None:
    """Installed models and versions, the host probe, and whether the daemon answers."""
    from edgeml.runtimes.probe import full_probe
    from edgeml_agent.config import load_config
    from edgeml_agent.store import Store

    try:
        config = load_config(config_path) if config_path else None
    except EdgeMLError as exc:
        _fail(exc)
    root = Path(data_dir) if data_dir else (config.data_dir if config else None)
    host = full_probe()
    models: dict[str, dict[str, JSON]] = {}
    if root is not None:
        store = Store(root, TrustStore())
        names = sorted({p.name for p in store.versions_dir.iterdir()}) if store.versions_dir.is_dir() else []
        models = {n: {"current": store.current(n), "versions": store.versions(n)} for n in names}
    daemon = _daemon_health(config.server.host, config.server.port, config.server.api_token) if config else None
    if as_json:
        click.echo(json.dumps({"host": host, "models": models, "daemon": daemon}, indent=2, default=str))
        return
    _print_host(host)
    for name, info in models.items():
        versions = info["versions"]
        click.echo(f"model {name}: current {info['current']}; installed "
                   f"{', '.join(map(str, versions if isinstance(versions, list) else []))}")
    if daemon is not None:
        click.echo(f"daemon: {'running' if daemon.get('status') == 'ok' else 'not running'} "
                   f"({daemon.get('status') or daemon.get('error')})")


def _print_host(host: Mapping[str, object]) -> None:
    runtimes, devices = host["runtimes"], host["devices"]
    assert isinstance(runtimes, list) and isinstance(devices, dict)
    click.echo(f"host: {host['arch']} {host['cpu_model']}, {host['cpu_count']} cpus, "
               f"{host['memory_total_mb']} MB; runtimes: {', '.join(runtimes) or 'none'}")
    for runtime, names in devices.items():
        click.echo(f"  {runtime}: {', '.join(names)}")
    if host["jetson_l4t"] or host["cuda"]:
        click.echo(f"  cuda: {host['cuda']}, gpu cc: {host['gpu_compute_capability']}, "
                   f"tensorrt: {host['tensorrt_version']}, l4t: {host['jetson_l4t']}")


def _daemon_health(host: str, port: int, token: str | None) -> dict[str, JSON]:
    import urllib.error  # here, not at the top: `run` should not pay for http.client and ssl
    import urllib.request

    req = urllib.request.Request(f"http://{host}:{port}/healthz")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            data: dict[str, JSON] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        return {"status": f"http {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


from edgeml_agent.enroll import enroll_command  # noqa: E402 - `edgeml-agent enroll` (fleet enrolment, issue 4)

main.add_command(enroll_command)

if __name__ == "__main__":
    main()
