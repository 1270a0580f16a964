"""amqtt plugins that make the embedded broker enforce the fleet's rules (see ``edgeml.protocol``).

amqtt builds plugins from dotted class paths plus a plain config dict, so the live account checker is
handed over through a registry keyed by a name the broker config carries.

Revocation: ``revoke`` withdraws a user's topic rights at once (new logins are refused by the store); the
broker then closes its connections (``IsolatingBroker.disconnect_user``). The in-process telemetry ingest is
fed by the broker itself before it acknowledges a message (``IsolatingBroker``'s ``on_receipt``), checked
with :func:`may_publish`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from edgeml.fleet.broker.accounts import BrokerAccounts
from edgeml.protocol import (
    device_may_publish,
    device_may_subscribe,
    service_may_publish,
    service_may_subscribe,
)

ACCOUNTS: dict[str, BrokerAccounts] = {}
# username -> kind ('service' | 'device') for sessions that logged in, so topic checks need no DB call.
_KINDS: dict[tuple[str, str], str] = {}
# registry key -> closes every connection of a username, now and later (the broker's disconnect_user)
DISCONNECTORS: dict[str, Callable[[str], Coroutine[Any, Any, int]]] = {}


# Login checks run here, a few at a time, so the broker's loop keeps serving connected clients meanwhile.
_LOGIN_CHECKS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edgeml-broker-login")


def revoke(registry_key: str, username: str) -> None:
    """A revoked device's open connection loses every topic right at once."""
    _KINDS.pop((registry_key, username), None)


@dataclass
class _FleetConfig:
    accounts: str = ""  # the registry key of this broker's accounts (and ingest tap)


class FleetAuthPlugin(BaseAuthPlugin):
    """Accept the service account and enrolled, unrevoked devices; refuse everyone else (no anonymous)."""

    Config = _FleetConfig

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._registry_key = str(self._get_config_option("accounts", ""))

    async def authenticate(self, *, session: Session) -> bool | None:
        accounts = ACCOUNTS.get(self._registry_key)
        if accounts is None or session is None or not session.username:
            return False
        # The check reads the store (and hashes the password): off the broker's event loop, or one slow
        # read (a busy SQLite file waits up to its busy timeout) stalls every connection of the broker.
        loop = asyncio.get_running_loop()
        kind = await loop.run_in_executor(_LOGIN_CHECKS, accounts.login, session.username, session.password)
        if kind is None:
            return False
        if session.will_flag and not _may_publish(kind, session.username, session.will_topic or ""):
            # amqtt publishes a last will without asking the topic plugins: refuse it here.
            return False
        _KINDS[(self._registry_key, session.username)] = kind
        return True


def may_publish(registry_key: str, username: str | None, topic: str) -> bool:
    """Whether this broker's logged-in ``username`` may publish on ``topic`` (same rule as PUBLISH)."""
    return bool(username) and _may_publish(_KINDS.get((registry_key, str(username))), str(username), topic)


def _may_publish(kind: str | None, username: str, topic: str) -> bool:
    if kind == "service":
        return service_may_publish(topic)
    return kind == "device" and device_may_publish(username, topic)


class FleetTopicPlugin(BaseTopicPlugin):
    """Per-topic rules: devices only their own topics, the service account reads all and writes desired."""

    Config = _FleetConfig

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._registry_key = str(self._get_config_option("accounts", ""))

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or not session.username or not topic:
            return False
        kind = _KINDS.get((self._registry_key, session.username))
        if action == Action.PUBLISH:
            return _may_publish(kind, session.username, topic)
        if kind == "service":
            return service_may_subscribe(topic) or action == Action.RECEIVE
        if kind == "device":  # SUBSCRIBE: the filter; RECEIVE (live, retained, queued): the message's topic
            return device_may_subscribe(session.username, topic)
        return False
