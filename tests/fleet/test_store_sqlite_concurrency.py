"""SQLite as the default fleet store under concurrent writers: WAL, a busy timeout and write transactions
that take the lock up front, so API writes and ingest batches wait their turn instead of failing with
``database is locked`` (seen as 500s on rollout create while ingest ran)."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import func, select, text

from edgeml.fleet.store import Store, sqlite_url
from edgeml.fleet.store.models import Device, Setting

WRITERS, ROUNDS = 6, 25


def test_concurrent_read_then_write_transactions_all_commit(tmp_path: Path) -> None:
    # given the default store with one counter row
    store = Store.open(sqlite_url(tmp_path / "fleet.db"))
    with store.session() as s:
        s.add(Setting(key="counter", value="0"))
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        # each transaction reads before it writes (the shape that made DEFERRED transactions fail at once)
        try:
            for i in range(ROUNDS):
                with store.session() as s:
                    row = s.get(Setting, "counter")
                    assert row is not None
                    row.value = str(int(row.value) + 1)
                    s.add(Device(id=f"d{n}-{i}", name="x", tags=[], hardware={}, installed={},
                                 mqtt_password_hash="x"))
        except BaseException as exc:
            errors.append(exc)

    def reader(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with store.reader() as s:
                    s.execute(select(func.count()).select_from(Device)).scalar()
        except BaseException as exc:
            errors.append(exc)

    # when six writers and a reader run at once
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    read_thread = threading.Thread(target=reader, args=(stop,))
    read_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    read_thread.join()
    # then nothing failed and no increment was lost
    assert errors == []
    with store.reader() as s:
        assert s.get(Setting, "counter").value == str(WRITERS * ROUNDS)   # type: ignore[union-attr]
        assert s.execute(select(func.count()).select_from(Device)).scalar() == WRITERS * ROUNDS
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert int(s.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 5000
    store.close()


def test_a_session_opened_inside_another_joins_it_instead_of_waiting_for_it(tmp_path: Path) -> None:
    # given the default store and an open write transaction on this thread
    store = Store.open(sqlite_url(tmp_path / "fleet.db"))
    with store.session() as outer:
        outer.add(Setting(key="outer", value="1"))
        outer.flush()
        # when code it calls opens its own session and writes (the signing key created on first use)
        with store.session() as inner:
            inner.add(Setting(key="inner", value="1"))
        # and a failing one inside it rolls back only its own part
        try:
            with store.session() as failing:
                failing.add(Setting(key="failed", value="1"))
                failing.flush()
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    # then both writes are committed together, without a 15 s wait for the lock, and the failed one is not
    with store.reader() as s:
        assert sorted(s.scalars(select(Setting.key))) == ["inner", "outer"]
    store.close()
