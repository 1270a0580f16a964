"""The local inference API, independent of the HTTP server that carries it.

``Api.handle(Request) -> Response`` routes, decodes inputs (JSON nested lists, ``.npy``, ``.npz``, text
for a bundle with a tokenizer), runs the model and encodes outputs as the client's ``Accept`` asks.
A request is decoded into a protocol-neutral :class:`Call`; the Open Inference Protocol
(:mod:`edgeml_agent.oip`) decodes its own bodies into the same ``Call`` and shares everything after that:
auth, size limits, sessions of stateful models (:mod:`edgeml_agent.sessions`), the registry, batching,
metrics and observers. Every bad input becomes a 4xx
with a message naming the problem; only a failure inside the runtime is a 500. A 4xx is the client's
mistake, never the model's: it is counted apart (``Metrics.count_rejected``) and the registry's observers
(metrics, telemetry, an update's health watch) never see it. JSON answers are strict JSON (NaN -> null).
"""

from __future__ import annotations

import hmac
import io
import time
import zipfile
from collections.abc import Callable, Mapping

import numpy as np

from edgeml.arrays import Array
from edgeml.errors import InferenceInputError
from edgeml.jsontypes import JSON as JSONValue
from edgeml.streaming import StreamResult, StreamState, run_stream, wants_framing
from edgeml_agent import npy
from edgeml_agent.exchange import (
    JSON,
    MAX_TENSOR_DIMS,
    SESSION_HEADER,
    Call,
    HttpError,
    Request,
    Response,
    check_method,
    check_names,
    error_response,
    json_response,
    parse_json,
)
from edgeml_agent.metrics import Metrics
from edgeml_agent.oip import OpenInference
from edgeml_agent.registry import LoadedModel, ModelRegistry, Observation, UnknownModelError
from edgeml_agent.sessions import SessionStore, check_session_id

Feeds = dict[str, Array]

NPY = "application/x-npy"
NPZ = "application/x-npz"
MAX_NPZ_EXPANDED = 256 << 20      # inflated size of a compressed .npz body


Decoder = Callable[[LoadedModel, Request], Call]
Encoder = Callable[[LoadedModel, Call, StreamResult, Request], Response]


class Api:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, api_token: str | None = None,
                 status: Callable[[], Mapping[str, JSONValue]] | None = None,
                 sessions: SessionStore | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.api_token = api_token
        self.status: Callable[[], Mapping[str, JSONValue]] = status or dict  # extra /healthz fields (daemon state)
        self.sessions = sessions if sessions is not None else SessionStore()   # (an empty store is falsy)
        self.draining = False
        self.oip = OpenInference(self)

    # -- entry points --------------------------------------------------------------------------------
    def authorize(self, path: str, headers: Mapping[str, str]) -> Response | None:
        """None when allowed; a 401 response otherwise. Health probes (/healthz, /v2/health/*) are open."""
        if self.api_token is None or path == "/healthz" or path.startswith("/v2/health/"):
            return None
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_token.encode()):
            return None
        resp = error_response(401, "missing or wrong API token: send 'Authorization: Bearer <api_token>'")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="edgeml-agent"'
        return resp

    def handle(self, req: Request) -> Response:
        try:
            resp = self._route(req)
        except HttpError as exc:
            resp = error_response(exc.status, exc.message)
        self.metrics.count_http(resp.status)
        return resp

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, req: Request) -> Response:
        path = req.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        if parts == ["healthz"]:
            check_method(req, "GET")
            state = "draining" if self.draining else "ok"
            return json_response(503 if self.draining else 200,
                                 {"status": state, "models": self.registry.names(), **self.status()})
        if parts == ["metrics"]:
            check_method(req, "GET")
            return Response(200, self.metrics.render(self.registry).encode(), "text/plain; version=0.0.4")
        if parts[:1] == ["v2"]:
            return self.oip.route(req, parts[1:])
        if parts == ["v1", "sessions"]:
            check_method(req, "GET")
            return json_response(200, self.sessions.stats())
        if parts[:2] == ["v1", "models"] and len(parts) == 5 and parts[3] == "sessions":
            check_method(req, "DELETE")
            return self._reset_session(parts[2], parts[4])
        if parts[:2] == ["v1", "models"]:
            if len(parts) == 2:
                check_method(req, "GET")
                models = [m.describe() for m in self.registry.models()]
                failed = [{"name": n, "state": "failed", "error": e} for n, e in self.registry.failures().items()]
                return json_response(200, {"models": models, "failed": failed})
            if len(parts) == 3:
                check_method(req, "GET")
                return json_response(200, self.loaded_model(parts[2]).describe())
            if len(parts) == 4 and parts[3] == "infer":
                check_method(req, "POST")
                return self.infer(parts[2], req)
        raise HttpError(404, f"no such endpoint: {req.method} {path} "
                             "(see GET /v1/models, POST /v1/models/{name}/infer, /healthz, /metrics, /v2)")

    def _reset_session(self, name: str, session_id: str) -> Response:
        self.loaded_model(name)
        try:
            existed = self.sessions.reset(name, session_id)
        except InferenceInputError as exc:
            raise HttpError(400, str(exc)) from None
        return json_response(200, {"model": name, "session": session_id, "reset": existed})

    def loaded_model(self, name: str) -> LoadedModel:
        """The model served as ``name``, or a 404."""
        try:
            return self.registry.get(name)
        except UnknownModelError as exc:
            raise HttpError(404, str(exc), "unknown_model") from None

    # -- inference -----------------------------------------------------------------------------------
    def infer(self, name: str, req: Request, decode: Decoder | None = None, encode: Encoder | None = None) -> Response:
        """Run one request on model ``name``; ``decode``/``encode`` are the protocol's (default: this API's)."""
        try:
            with self.registry.acquire(name) as loaded:
                start = time.perf_counter()
                resp, error, feeds, outputs = self._infer(loaded, req, decode or decode_call, encode or encode_call)
                seconds = time.perf_counter() - start
        except UnknownModelError as exc:
            raise HttpError(404, str(exc), "unknown_model") from None
        if error is not None and resp.status < 500:
            # The client's mistake (bad input, an unacceptable Accept): counted apart, never shown to the
            # observers (health watch, telemetry, shadow), so no client can move a model's error rate.
            kind = error
            resp.after = lambda: self.metrics.count_rejected(loaded.name, loaded.version, kind)
            return resp
        observation = Observation(loaded.name, loaded.version, seconds, resp.status, error, feeds, outputs)
        resp.after = lambda: self.registry.notify(observation)
        return resp

    def _infer(self, loaded: LoadedModel, req: Request, decode: Decoder,
               encode: Encoder) -> tuple[Response, str | None, Feeds | None, Feeds | None]:
        feeds: dict[str, Array] | None = None
        try:
            call = decode(loaded, req)
            t0 = time.perf_counter()
            raw = call.arrays
            if call.text is not None:
                raw = {**loaded.model.encode_text(call.text), **raw}
            result = self.execute(loaded, call, raw)
            feeds = result.last_feeds
            model_ms = (time.perf_counter() - t0) * 1e3
            resp = encode(loaded, call, result, req)
            # Server-Timing (W3C): what the runtime took (with the tokenizer), and the agent's whole time
            # from request line to response, so a client can tell runtime, agent and network time apart.
            timing = f"model;dur={model_ms:.3f}"
            if req.received:
                timing += f", agent;dur={(time.perf_counter() - req.received) * 1e3:.3f}"
            resp.headers["Server-Timing"] = timing
            return resp, None, feeds, result.outputs
        except HttpError as exc:
            return error_response(exc.status, exc.message), exc.kind, feeds, None
        except InferenceInputError as exc:
            return error_response(400, str(exc)), "bad_input", feeds, None
        except Exception as exc:  # the runtime failed on inputs that passed the checks: not the client's fault
            return error_response(500, f"inference failed in {loaded.model.runtime}: {exc}"), "runtime", feeds, None

    def execute(self, loaded: LoadedModel, call: Call, raw: Mapping[str, Array]) -> StreamResult:
        """Run decoded inputs: in the client's session of a stateful model, framed, or as one plain call."""
        model = loaded.model
        check = model.backend.check_feeds
        if call.session is not None:
            if not model.state_pairs and model.framing is None:
                raise HttpError(400, f"model '{model.name}' keeps no state between calls: drop the session id")
            with self.sessions.use(model, call.session) as session:
                if call.reset:
                    session.stream.reset()
                result = run_stream(loaded.infer, check, session.stream, raw)
            if call.end:
                self.sessions.reset(model.name, call.session)
            return result
        if wants_framing(model.framing, raw):   # a one-off stream: state starts fresh, leftover samples dropped
            return run_stream(loaded.infer, check, StreamState(model.state_pairs, model.inputs, model.framing), raw)
        missing = [p.input for p in model.state_pairs if p.input not in raw]
        if missing:
            raise HttpError(400, f"model '{model.name}' is stateful: pass its state input(s) {', '.join(missing)} "
                                 f"(and read the next state from the outputs), or send a session id "
                                 f"(header X-Session-Id) and the agent keeps the state for you")
        checked = check(raw)
        return StreamResult(loaded.infer(checked), None, 0, checked)


def decode_call(loaded: LoadedModel, req: Request) -> Call:
    """This API's bodies: JSON ``{"inputs": ..., "text": [...], "session": id, "reset": bool}``, .npy, .npz;
    the session id may also come in the X-Session-Id header."""
    ctype = req.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()
    header_session = req.headers.get(SESSION_HEADER)
    if not req.body:
        raise HttpError(400, "the request body is empty; send {\"inputs\": {name: nested lists}} or a .npy/.npz body")
    # `curl -d` labels JSON as a form; there is no form encoding of tensors, so read it as JSON.
    if ctype in (JSON, "text/json", "application/x-www-form-urlencoded", ""):
        call = _json_call(loaded, parse_json(req.body))
    elif ctype == NPY:
        specs = loaded.model.backend.inputs
        if len(specs) != 1:
            raise HttpError(400, f"this model takes several inputs ({', '.join(s.name for s in specs)}): send an "
                                 f".npz body (Content-Type {NPZ}) with one array per input name")
        call = Call({specs[0].name: _load_npy(req.body)})
    elif ctype == NPZ:
        call = Call(_load_npz(req.body))
        check_names(call.arrays)
    else:
        raise HttpError(415, f"unsupported Content-Type '{ctype}'; use {JSON}, {NPY} or {NPZ}")
    if header_session is not None:
        call.session = header_session
    if call.session is not None:
        check_session_id(call.session)
    return call


def _json_call(loaded: LoadedModel, doc: object) -> Call:
    specs = {s.name: s for s in loaded.model.backend.inputs}
    fields = doc if isinstance(doc, dict) else {"inputs": doc}
    raw, text = fields.get("inputs"), fields.get("text")
    session, reset = fields.get("session"), fields.get("reset", False)
    if raw is None and text is None:
        hint = ', or {"text": ["..."]}' if loaded.model.takes_text else ""
        raise HttpError(400, "the JSON body needs an 'inputs' key: {\"inputs\": {name: nested lists}}" + hint)
    if session is not None and not isinstance(session, str):
        raise HttpError(400, "'session' must be a string (a session id)")
    if not isinstance(reset, bool):
        raise HttpError(400, "'reset' must be true or false")
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        if len(specs) != 1:
            raise HttpError(400, f"this model takes several inputs ({', '.join(specs)}): "
                                 "send 'inputs' as an object by input name")
        raw = {next(iter(specs)): raw}
    check_names(raw)
    arrays = {n: _json_array(n, v, specs[n].dtype if n in specs else None) for n, v in raw.items()}
    return Call(arrays, text, session, reset)


def _json_array(name: str, value: object, dtype: str | None) -> Array:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise HttpError(400, f"input '{name}' is not a rectangular array of at most {MAX_TENSOR_DIMS} "
                             "dimensions (rows of different lengths, or nested too deeply)") from None
    if arr.dtype.kind not in "biuf":
        raise HttpError(400, f"input '{name}' must hold numbers, not {arr.dtype} values")
    if dtype is not None:
        want = np.dtype(dtype)
        if want.kind in "iu" and arr.dtype.kind == "f":
            raise HttpError(400, f"input '{name}' holds floating-point numbers; the model wants {want} (integers)")
        if want.kind in "biuf":
            arr = arr.astype(want, copy=False)
    return arr


def _load_npy(body: bytes) -> Array:
    try:
        return npy.loads(body)
    except npy.NpyError as exc:
        raise HttpError(400, f"the body is not a valid .npy array ({exc})") from None


def _load_npz(body: bytes) -> dict[str, Array]:
    """An .npz is a zip of .npy files. Sizes are checked before anything is inflated (a compressed
    body of a few KB can claim gigabytes), then each member goes through the fast .npy reader."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            members = zf.infolist()
            expanded = sum(m.file_size for m in members)
            if expanded > MAX_NPZ_EXPANDED:
                raise HttpError(413, f"the .npz expands to {expanded} bytes, over the {MAX_NPZ_EXPANDED}-byte limit")
            arrays = {}
            for m in members:
                name = m.filename[:-4] if m.filename.endswith(".npy") else m.filename
                arrays[name] = npy.loads(zf.read(m))
            return arrays
    except HttpError:
        raise
    except (zipfile.BadZipFile, npy.NpyError, ValueError, OSError, EOFError) as exc:
        raise HttpError(400, f"the body is not a valid .npz archive ({type(exc).__name__}: {exc})") from None


def encode_call(loaded: LoadedModel, call: Call, result: StreamResult, req: Request) -> Response:
    """This API's answer: as Accept asks; a JSON answer says how a stream went (frames, pending samples)."""
    extra: dict[str, object] = {}
    if call.session is not None:
        extra["session"] = call.session
    if result.frames is not None:
        extra.update(frames=result.frames, pending_samples=result.pending)
    return encode_outputs(loaded, result.outputs, req.headers.get("accept", ""), extra)


def encode_outputs(loaded: LoadedModel, outputs: Mapping[str, Array], accept: str,
                   extra: Mapping[str, object] | None = None) -> Response:
    accept = accept.lower()
    if NPZ in accept:
        buf = io.BytesIO()
        np.savez(buf, **dict(outputs))  # type: ignore[arg-type]
        return Response(200, buf.getvalue(), NPZ)
    if NPY in accept:
        if len(outputs) != 1:
            raise HttpError(406, f"the model has {len(outputs)} outputs; ask for Accept: {NPZ} or {JSON}")
        return Response(200, npy.dumps(next(iter(outputs.values()))), NPY)
    data = {"model": loaded.name, "version": loaded.version,
            "outputs": {n: _json_values(a) for n, a in outputs.items()}, **(extra or {})}
    return json_response(200, data)


def _json_values(arr: Array) -> object:
    """Nested lists of the array's values; NaN and ±Infinity as ``null`` (JSON has no such numbers: ask
    for ``Accept: application/x-npy`` or ``x-npz`` to get them exactly)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        values = arr.astype(object)
        values[~np.isfinite(arr)] = None
        return values.tolist()
    return arr.tolist()
