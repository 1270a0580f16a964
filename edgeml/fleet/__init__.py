"""The fleet server: registry of bundles and devices, people's tokens and roles, audit log, MQTT broker.

Pieces (each replaceable on its own; later areas plug in the same way):

- ``store``      SQLAlchemy 2 models + ``Store.open(url)`` (SQLite file by default, PostgreSQL via psycopg 3);
                 the schema is owned by the Alembic migrations in ``migrations/``, run on every open.
- ``api/*``      one FastAPI router per area (tokens, audit, keys, bundles, devices, broker, meta);
                 ``app.create_app(ctx)`` mounts them. A new area = a router module + one line in ``app.py``.
- ``auth``       bearer tokens → :class:`~edgeml.fleet.auth.Principal`; route guards ``Viewer``, ``Deployer``,
                 ``Admin``, ``DeviceCaller``, ``AnyCaller`` (every route must use exactly one: a test enforces it).
- ``audit``      ``audit.record(session, request, actor, action, target, **details)`` in the change's transaction.
- ``artifacts``  content-addressed bundle files (sha256) under ``<data-dir>/artifacts``.
- ``broker``     ``EmbeddedBroker`` (amqtt + the fleet's auth/topic plugins) or ``ExternalBroker``
                 (``--broker mqtt://…``), both ``start()``/``stop()``; ``service_credentials(store)`` is the
                 server's own MQTT account; ``mosquitto`` writes password/ACL files for a real Mosquitto.
- ``topics``     topic layout and who may publish/subscribe what (shared by both brokers).
- ``server``     ``FleetServer(ServerConfig)`` wires it all; ``serve(config)`` adds uvicorn.
- ``cli/``     ``edgeml-fleet``, one module per command group, each a thin layer over ``client``.
- ``client``   :class:`Client`, the typed Python client (CI pipelines, notebooks, the CLI); its pieces are in
               ``sdk/`` (config, HTTP + error mapping, records, waiting for a rollout).

Importing this package is cheap: ``from edgeml.fleet import Client`` loads httpx and the client, never the
server's FastAPI or SQLAlchemy (a CI job installs neither).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeml.fleet.client import Client, ClientConfig

__all__ = ["Client", "ClientConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("edgeml.fleet.client"), name)
    raise AttributeError(f"module 'edgeml.fleet' has no attribute '{name}'")
