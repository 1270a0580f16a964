"""Two replacements for amqtt 0.12.1 data structures that make its broker safe under many devices.

``SubscriptionTable`` replaces ``Broker._subscriptions`` (topic filter -> [(session, qos)]). amqtt walks that
dict in two places with ``await`` inside the loop: the retained-message replay after every CONNECT and the
broadcast of every message. A device that subscribes while such a walk is suspended changes the dict's
size, the walk raises ``RuntimeError: dictionary changed size during iteration``, and the connection (or
the broadcast) dies. Here every iteration walks a snapshot, and ``matching`` finds the filters for a topic
through an index (exact filters by key, wildcard filters from a small set) instead of testing every
filter: with one ``…/desired`` filter per device, the old walk cost O(devices) per message.

``ReceiptQueue`` replaces a session's ``delivered_message_queue``. amqtt puts an incoming PUBLISH on that
queue and only then answers PUBACK; everything after it (the session's message loop, a take-over by a
reconnecting client that clears the queue, a failed broadcast) can drop the message although its sender
was told it arrived. The queue hands each message to a receipt callback (the fleet's ingest) at the
moment it is queued, i.e. before the PUBACK, so an acknowledged message has always reached the ingest.

Both are used only from the broker's event loop thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class SubscriptionTable(dict[str, list[Any]]):
    """amqtt's subscription dict, iterated through snapshots and indexed by wildcard-or-not."""

    def __init__(self) -> None:
        super().__init__()
        self._wildcards: set[str] = set()

    def __setitem__(self, key: str, value: list[Any]) -> None:
        super().__setitem__(key, value)
        if has_wildcard(key):
            self._wildcards.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._wildcards.discard(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._wildcards.discard(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self._wildcards.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[Any]]]:  # type: ignore[override]
        return [(key, list(subs)) for key, subs in super().items()]

    def matching(self, topic: str, matches: Callable[[str, str], bool]) -> list[str]:
        """The filters that match ``topic`` (``matches(topic, filter)`` decides for wildcard filters)."""
        found = [topic] if not has_wildcard(topic) and super().__contains__(topic) else []
        return found + [f for f in list(self._wildcards) if matches(topic, f)]


class ReceiptQueue(asyncio.Queue[Any]):
    """A session's incoming-message queue that reports each message as it is queued (before the PUBACK)."""

    def __init__(self, on_receipt: Callable[[Any], None]) -> None:
        super().__init__()
        self._on_receipt = on_receipt

    def put_nowait(self, item: Any) -> None:
        # asyncio.Queue.put ends in put_nowait too, so QoS 0, 1 and 2 all pass here.
        self._on_receipt(item)
        super().put_nowait(item)
