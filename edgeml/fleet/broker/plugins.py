"""amqtt plugins that make the embedded broker enforce the fleet's rules (see ``edgeml.protocol``).

amqtt builds plugins from dotted class paths plus a plain config dict, so the live account checker is
handed over through a registry keyed by a name the broker config carries.

Revocation: ``revoke`` withdraws a user's topic rights at once (new logins are refused by the store); the
broker then closes its connections (``IsolatingBroker.disconnect_user``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session

from edgeml.fleet.broker.accounts import BrokerAccounts
from edgeml.protocol import (
    device_may_publish,
    device_may_subscribe,
    service_may_publish,
    service_may_subscribe,
)

ACCOUNTS: dict[str, BrokerAccounts] = {}
# registry key -> sink(topic, payload) for every publish the broker accepted (the in-process telemetry ingest)
TAPS: dict[str, Callable[[str, bytes], None]] = {}
# username -> kind ('service' | 'device') for sessions that logged in, so topic checks need no DB call.
_KINDS: dict[tuple[str, str], str] = {}
# registry key -> closes every connection of a username, now and later (the broker's disconnect_user)
DISCONNECTORS: dict[str, Callable[[str], Coroutine[Any, Any, int]]] = {}


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
        kind = accounts.login(session.username, session.password)
        if kind is None:
            return False
        if session.will_flag and not _may_publish(kind, session.username, session.will_topic or ""):
            # amqtt publishes a last will without asking the topic plugins: refuse it here.
            return False
        _KINDS[(self._registry_key, session.username)] = kind
        return True


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


class FleetIngestTap(BasePlugin[BaseContext]):
    """Hands every publish the broker accepted (after the topic rules) to the fleet's ingest in-process.

    With the embedded broker the ingest needs no MQTT session of its own: nothing is lost between the
    broker and the store when the server stops, because amqtt finishes the plugin calls it fired
    before it shuts down, and the ingest then writes everything it was handed.
    """

    Config = _FleetConfig

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._registry_key = str(self._get_config_option("accounts", ""))

    async def on_broker_message_broadcast(self, *, client_id: str, message: Any) -> None:
        sink = TAPS.get(self._registry_key)
        if sink is not None and message.topic:
            sink(str(message.topic), bytes(message.data or b""))
