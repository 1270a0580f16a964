"""amqtt's broker with the two holes that let one device see another's retained messages closed, and a way
to close a revoked device's connections.

amqtt 0.12.1 checks a topic plugin's RECEIVE rule for live messages only. Retained messages go out unchecked
in two places: on SUBSCRIBE (harmless while the SUBSCRIBE rule holds) and, worse, right after every CONNECT,
where it replays the retained messages matching *every* filter any client holds, to the new client. A device
that subscribed to nothing thus received every device's retained ``desired`` document. Here every retained
or queued message is delivered only for a filter the session itself holds and only if the topic plugins
allow this session to RECEIVE its topic — the same check as for live messages.
"""

from __future__ import annotations

import asyncio

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.session import Session


class IsolatingBroker(Broker):
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

    async def disconnect_user(self, username: str) -> int:
        """Close every connection logged in as ``username`` and drop its sessions (subscriptions and
        queued messages). Returns how many connections were closed."""
        closed = 0
        for client_id, (session, handler) in list(self._sessions.items()):
            if session.username != username:
                continue
            if session.transitions.is_connected():
                # What a lost connection does: the session's message loop closes the socket and ends.
                await handler.handle_connection_closed()
                closed += 1
            await self._delete_session(client_id)
        return closed
