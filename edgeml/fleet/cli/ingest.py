"""``edgeml-fleet ingest``: a telemetry ingest worker on the broker's shared subscription."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--db", required=True, help="the fleet database the API server uses (postgresql://… or sqlite:///…)")
@click.option("--broker", required=True, help="mqtt://host:port (or mqtts://) of the fleet's external broker")
@click.option("--name", default=None,
              help="this worker's name: stable across restarts, unique among workers (default: the host name)")
@click.option("--broker-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="CA bundle that signed an mqtts:// broker's certificate")
@click.option("--batch-size", type=click.IntRange(min=1, max=5000), default=500, show_default=True,
              help="messages written per transaction at most")
@click.option("--telemetry-retention-days", type=float, default=7.0, show_default=True,
              help="keep raw telemetry this long (roll-ups are kept for good)")
def ingest(db: str, broker: str, name: str | None, broker_ca: Path | None, batch_size: int,
           telemetry_retention_days: float) -> None:
    """Store device telemetry from the broker (run one or more next to 'serve --no-ingest')."""
    from edgeml.fleet.ingest_worker import WorkerConfig, default_worker_name, run_worker

    run_worker(WorkerConfig(db_url=db, broker_url=broker, name=name or default_worker_name(), broker_ca=broker_ca,
                            telemetry_retention_days=telemetry_retention_days, batch_size=batch_size))
