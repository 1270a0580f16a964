"""amqtt's broker with the holes that let one device see another's retained messages closed, a way to close
a revoked device's connections, and no acknowledged message dropped when its sender disconnects.

amqtt 0.12.1 checks a topic plugin's RECEIVE rule for live messages only. Retained messages go out unchecked
in two places: on SUBSCRIBE (harmless while the SUBSCRIBE rule holds) and, worse, right after every CONNECT,
where it replays the retained messages matching *every* filter any client holds, to the new client. A device
that subscribed to nothing thus received every device's retained ``desired`` document. Here every retained
or queued message is delivered only for a filter the session itself holds and only if the topic plugins
allow this session to RECEIVE its topic — the same check as for live messages.

Concurrency: everything here runs on the broker's event loop; ``disconnect_user`` is called from other
threads through ``asyncio.run_coroutine_threadsafe``. A connection registers itself and checks for its
user's revocation without awaiting in between, so a revocation either finds it or is found by it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session


class IsolatingBroker(Broker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: dict[str, set[BrokerProtocolHandler]] = {}  # username -> open connections
        self._disconnected_users: set[str] = set()  # revoked: device ids are never reused

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
