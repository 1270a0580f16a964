"""Client sessions of stateful models: the agent keeps each stream's state between requests.

A client names its stream with a session id (``X-Session-Id`` header or a ``"session"`` field in the
JSON body); the agent then feeds the model's state outputs back as the next state inputs
(:mod:`edgeml.streaming`), so a streaming client sends only its frames. The explicit form needs no
session: the client passes every state input itself and gets the state outputs back.

Bounds, because every session holds its state in memory (e.g. 1 KB for a [2, 1, 128] float state):
at most ``max_sessions`` live at once (the least recently used one is dropped to make room), and a
session unused for ``idle_s`` seconds expires. A dropped or expired session starts again from the
init state; its client is not told, so a client that must not lose state sends it explicitly.

A session belongs to one model name and is reset when that model's version changes (an update's new
model may have another state layout). Requests of one session run one at a time, in arrival order
(the session's lock); different sessions run in parallel.

Concurrency: ``_lock`` guards the table only; a session's own lock is taken after ``_lock`` is
released, so a slow model call never blocks other sessions' lookups.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgeml.errors import InferenceInputError
from edgeml.inference import Model
from edgeml.streaming import StreamState

DEFAULT_MAX_SESSIONS = 1000
DEFAULT_IDLE_S = 600.0
MAX_SESSION_ID_CHARS = 128
_SESSION_ID = re.compile(r"^[A-Za-z0-9._:@-]+$")


def check_session_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SESSION_ID_CHARS or not _SESSION_ID.match(value):
        raise InferenceInputError(f"a session id is 1-{MAX_SESSION_ID_CHARS} characters of letters, digits "
                                  "and . _ : @ - (e.g. X-Session-Id: mic-1)")
    return value


class Session:
    def __init__(self, model: Model, now: float) -> None:
        self.version = model.version
        self.stream = StreamState(model.state_pairs, model.inputs, model.framing)
        self.last_used = now
        self.lock = threading.Lock()


class SessionStore:
    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS, idle_s: float = DEFAULT_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: OrderedDict[tuple[str, str], Session] = OrderedDict()   # least recently used first
        self._lock = threading.Lock()
        self.evicted = 0          # dropped to make room (observability: /v1/sessions)
        self.expired = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @contextmanager
    def use(self, model: Model, session_id: str) -> Iterator[Session]:
        """The session ``session_id`` of ``model`` (created, or reset after a version change), held
        exclusively for one request."""
        key = (model.name, check_session_id(session_id))
        with self._lock:
            now = self._clock()
            self._expire(now)
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = Session(model, now)
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
                    self.evicted += 1
            self._sessions.move_to_end(key)
            session.last_used = now
        with session.lock:
            if session.version != model.version:
                session.version = model.version
                session.stream = StreamState(model.state_pairs, model.inputs, model.framing)
            yield session

    def reset(self, model_name: str, session_id: str) -> bool:
        """Forget a session (its next request starts from the init state). False if there was none."""
        with self._lock:
            return self._sessions.pop((model_name, check_session_id(session_id)), None) is not None

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            self._expire(self._clock())
            return {"active": len(self._sessions), "max_sessions": self.max_sessions, "idle_s": self.idle_s,
                    "evicted": self.evicted, "expired": self.expired}

    def _expire(self, now: float) -> None:
        """Drop sessions idle for longer than ``idle_s`` (the oldest are first in the table)."""
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_used <= self.idle_s:
                return
            del self._sessions[key]
            self.expired += 1
