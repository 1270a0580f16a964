"""The two data structures that keep amqtt 0.12.1 alive under many devices (edgeml.fleet.broker.amqtt_tables)."""

from __future__ import annotations

import asyncio

from edgeml.fleet.broker.amqtt_tables import ReceiptQueue, SubscriptionTable


def _matches(topic: str, topic_filter: str) -> bool:
    t, f = topic.split("/"), topic_filter.split("/")
    if f[-1] == "#":
        return t[:len(f) - 1] == f[:-1] or all(a in ("+", b) for a, b in zip(f[:-1], t, strict=False))
    return len(t) == len(f) and all(a in ("+", b) for a, b in zip(f, t, strict=True))


def test_subscribing_while_the_table_is_walked_does_not_break_the_walk() -> None:
    # amqtt walks the dict with an await inside; a device subscribing meanwhile used to raise
    # "dictionary changed size during iteration" and kill the connection being served.
    table = SubscriptionTable()
    table["edgeml/v1/dev-1/desired"] = []
    seen = []
    for topic_filter in table:
        seen.append(topic_filter)
        table[f"edgeml/v1/dev-{len(table) + 1}/desired"] = []  # a subscribe during the walk
    for topic_filter, _ in table.items():
        del table[topic_filter]  # and a disconnect during the other walk
    assert seen == ["edgeml/v1/dev-1/desired"] and len(table) == 0


def test_matching_finds_exact_and_wildcard_filters_only() -> None:
    table = SubscriptionTable()
    for f in ["edgeml/v1/dev-1/desired", "edgeml/v1/dev-2/desired", "edgeml/v1/+/telemetry", "edgeml/#"]:
        table[f] = []
    assert sorted(table.matching("edgeml/v1/dev-1/desired", _matches)) == ["edgeml/#", "edgeml/v1/dev-1/desired"]
    assert sorted(table.matching("edgeml/v1/dev-9/telemetry", _matches)) == ["edgeml/#", "edgeml/v1/+/telemetry"]
    table.pop("edgeml/#")
    del table["edgeml/v1/+/telemetry"]
    assert table.matching("edgeml/v1/dev-9/telemetry", _matches) == []
    table.clear()
    assert table.matching("edgeml/v1/dev-1/desired", _matches) == []


def test_a_message_is_reported_before_it_is_queued_for_every_way_in() -> None:
    reported: list[object] = []
    queue = ReceiptQueue(lambda m: reported.append((m, queue.qsize())))

    async def both_ways() -> None:
        queue.put_nowait("qos0")  # QoS 0 goes in with put_nowait
        await queue.put("qos1")  # QoS 1 and 2 with put
    asyncio.run(both_ways())
    # reported with the queue size *before* each message went in: the ingest has it before the PUBACK
    assert reported == [("qos0", 0), ("qos1", 1)]
