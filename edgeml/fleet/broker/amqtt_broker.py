"""amqtt's broker with the holes that let one device see another's retained messages closed, a way to close
a revoked device's connections, and no acknowledged message dropped when its sender disconnects.

amqtt 0.12.1 checks a topic plugin's RECEIVE rule for live messages only. Retained messages go out unchecked
in two places: on SUBSCRIBE (harmless while the SUBSCRIBE rule holds) and, worse, right after every CONNECT,
where it replays the retained messages matching *every* filter any client holds, to the new client. A device
that subscribed to nothing thus received every device's retained ``desired`` document. Here every retained
or queued message is delivered only for a filter the session itself holds and only if the topic plugins
allow this session to RECEIVE its topic — the same check as for live messages.

Under load (hundreds of devices connecting while others subscribe and publish) amqtt itself breaks in two
ways, both contained here (see ``amqtt_tables``): its subscription walks fail with "dictionary changed
size during iteration", and it acknowledges a QoS 1 PUBLISH before anything has taken it, so a dying or
taken-over session drops acknowledged messages. Every incoming message therefore goes to ``on_receipt``
(the fleet's ingest) before its PUBACK, and the subscription dict is iterated through snapshots and an
index. The broadcast of a message walks only the filters that match it.

Concurrency: everything here runs on the broker's event loop; ``disconnect_user`` is called from other
threads through ``asyncio.run_coroutine_threadsafe``. A connection registers itself and checks for its
user's revocation without awaiting in between, so a revocation either finds it or is found by it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from edgeml.fleet.broker.amqtt_tables import ReceiptQueue, SubscriptionTable

log = logging.getLogger(__name__)

# (session, topic, payload) of every message a client sent, called before the broker acknowledges it
OnReceipt = Callable[[Session, str, bytes], None]


class IsolatingBroker(Broker):
    def __init__(self, *args: Any, on_receipt: OnReceipt | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = SubscriptionTable()
        self._on_receipt = on_receipt
        self._connections: dict[str, set[BrokerProtocolHandler]] = {}  # username -> open connections
        self._disconnected_users: set[str] = set()  # revoked: device ids are never reused

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[BrokerProtocolHandler, Session]:
        # Runs before the connection's reader starts, so no PUBLISH is read before the queue is swapped.
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        if self._on_receipt is not None and not isinstance(session.delivered_message_queue, ReceiptQueue):
            on_receipt = self._on_receipt

            def received(message: Any) -> None:
                if message is not None and message.topic:
                    on_receipt(session, str(message.topic), bytes(message.data or b""))

            session.delivered_message_queue = ReceiptQueue(received)
        return handler, session

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        # amqtt's version tests every filter against every message, awaiting inside a walk of the live dict.
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        table: SubscriptionTable = self._subscriptions
        for topic_filter in table.matching(topic, self._matches):
            for target, sub_qos in list(table.get(topic_filter, ())):
                try:
                    await self._send_broadcast(broadcast, target, sub_qos, running_tasks)
                except Exception:  # one bad target must not cost the others their copy
                    log.exception("broadcast of %s to %s failed", topic, target.client_id)

    async def _send_broadcast(self, broadcast: dict[str, Any], target: Session, sub_qos: int,
                              running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt's delivery of one broadcast to one subscriber, unchanged in what it does."""
        topic, qos = broadcast["topic"], broadcast.get("qos", sub_qos)
        if not await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
            return
        connected = target.transitions.state == "connected"
        if not connected and not target.clean_session and qos in (QOS_1, QOS_2) and not target.is_anonymous:
            await self._retain_broadcast_message(broadcast, qos, target)  # offline persistent session: queue it
            return
        handler = self._get_handler(target) if connected else None
        if handler is not None:
            running_tasks.append(asyncio.ensure_future(
                handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)))

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, qos = subscription
        held = any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, []))
        handler = self._get_handler(session)
        if not held or handler is None:
            return
        # A snapshot: the dict may change while we await the rule checks.
        matching = [m for topic, m in list(self._retained_messages.items()) if self._matches(topic, topic_filter)]
        sends = [handler.mqtt_publish(m.topic, m.data, min(qos, m.qos or qos), retain=True)
                 for m in matching if await self._topic_filtering(session, m.topic, Action.RECEIVE)]
        if sends:
            await asyncio.wait([asyncio.ensure_future(send) for send in sends])

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Queued while the session was offline; the session may since have been taken over by another
        # login with the same client id, so the rule is checked again for whoever holds it now.
        handler = self._get_handler(session)
        sends = []
        while handler is not None and not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            if await self._topic_filtering(session, queued.topic, Action.RECEIVE):
                sends.append(asyncio.ensure_future(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=True)))
        if sends:
            await asyncio.wait(sends)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # Runs for the whole life of an authenticated connection. Connections are tracked here rather
        # than looked up in ``_sessions``: a second CONNECT with the same client id replaces the session
        # there while the first connection stays open (amqtt does not close it).
        username = str(client_session.username)
        connections = self._connections.setdefault(username, set())
        connections.add(handler)
        try:
            if username in self._disconnected_users:  # revoked between its login check and now
                await handler.handle_connection_closed()  # the loop below then closes the socket
            await super()._client_message_loop(client_session, handler)
            await self._deliver_leftovers(client_session, handler)
        finally:
            connections.discard(handler)
            if not connections:
                self._connections.pop(username, None)

    async def _deliver_leftovers(self, session: Session, handler: BrokerProtocolHandler) -> None:
        # amqtt acknowledges a QoS 1 PUBLISH as soon as it is queued, and its message loop ends at the
        # client's DISCONNECT, dropping whatever is still queued: the sender was told those arrived.
        loop = asyncio.get_running_loop()
        while not session.delivered_message_queue.empty():
            message = loop.create_future()
            message.set_result(session.delivered_message_queue.get_nowait())
            await self._handle_message_delivery(session, handler, message)

    async def disconnect_user(self, username: str) -> int:
        """Close every connection logged in as ``username``, now and later, and drop its sessions
        (subscriptions and queued messages). Returns how many connections were closed."""
        self._disconnected_users.add(username)
        handlers = list(self._connections.get(username, ()))
        for handler in handlers:
            # What a lost connection does: the connection's message loop closes the socket and ends.
            await handler.handle_connection_closed()
        for client_id, (session, _) in list(self._sessions.items()):
            if session.username == username:
                await self._delete_session(client_id)
        return len(handlers)
