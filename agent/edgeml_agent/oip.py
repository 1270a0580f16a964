"""The Open Inference Protocol (KServe v2, HTTP/REST): the API Triton and OpenVINO Model Server speak.

Served beside the agent's own API on the same port, with the same auth token, body-size limit, registry,
micro-batching, sessions and metrics (:class:`edgeml_agent.api.Api` decodes a v2 request into the same
:class:`~edgeml_agent.exchange.Call` its own API uses), so existing clients (``tritonclient[http]``, KServe
clients, ``curl``) work unchanged:

- ``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready`` (open, like /healthz);
- ``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``GET .../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer`` with typed tensors: BOOL, UINT8-64, INT8-64, FP16, FP32,
  FP64 and BYTES. A BYTES input named ``text`` goes through the bundle's tokenizer; the metadata of such a
  model lists ``text`` in place of the inputs the tokenizer fills.
- the binary tensor data extension: ``Inference-Header-Content-Length`` says how long the JSON header is;
  each binary input carries ``parameters.binary_data_size`` and its raw bytes follow in input order
  (BYTES elements as 4-byte little-endian length + bytes). Outputs come back binary when the request asks
  (``outputs[].parameters.binary_data`` or ``parameters.binary_data_output``), else as JSON ``data``.
- stateful models: Triton's sequence parameters map to the agent's sessions: ``sequence_id`` names the
  session, ``sequence_start`` resets it first, ``sequence_end`` drops it after the call; the
  ``X-Session-Id`` header works too.

A version other than the one loaded is a 404. Errors are ``{"error": message}`` with a 4xx status for
the client's mistakes (the body the protocol defines), 5xx only for a failure inside the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from edgeml._version import __version__
from edgeml.arrays import Array, DType
from edgeml.bundle.manifest import TensorSpec
from edgeml.streaming import StreamResult
from edgeml_agent.exchange import (
    SESSION_HEADER,
    Call,
    HttpError,
    Request,
    Response,
    check_method,
    check_names,
    json_response,
    parse_json,
)
from edgeml_agent.registry import LoadedModel
from edgeml_agent.sessions import check_session_id

if TYPE_CHECKING:
    from edgeml_agent.api import Api

DATATYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
             "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
             "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
             "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64)}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
TEXT_INPUT = "text"
MAX_TENSORS = 64                      # inputs or outputs named in one request


def datatype(dtype: str | DType) -> str:
    """The v2 datatype of a numpy dtype (strings and objects are BYTES)."""
    dt = np.dtype(dtype)
    return _BY_DTYPE.get(dt, "BYTES")


def _shape(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape]


class OpenInference:
    """Routes ``/v2/...`` for an :class:`~edgeml_agent.api.Api` (called from ``Api._route``)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def route(self, req: Request, parts: list[str]) -> Response:
        api = self.api
        if not parts:
            check_method(req, "GET")
            return json_response(200, {"name": "edgeml-agent", "version": __version__,
                                        "extensions": ["binary_tensor_data", "sequence"]})
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            check_method(req, "GET")
            ok = parts[1] == "live" or not api.draining
            return Response(200 if ok else 503, b"", "text/plain")
        if parts[0] == "models" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            if rest[:1] == ["versions"] and len(rest) >= 2:
                self._check_version(name, rest[1])
                rest = rest[2:]
            if not rest:
                check_method(req, "GET")
                return json_response(200, self.metadata(api.loaded_model(name)))
            if rest == ["ready"]:
                check_method(req, "GET")
                api.loaded_model(name)
                return Response(200, b"", "text/plain")
            if rest == ["infer"]:
                check_method(req, "POST")
                return api.infer(name, req, decode_v2, encode_v2)
        raise HttpError(404, f"no such endpoint: {req.method} {req.path} (Open Inference Protocol: GET /v2, "
                             "/v2/health/{live,ready}, /v2/models/{name}[/ready], POST /v2/models/{name}/infer)")

    def _check_version(self, name: str, version: str) -> None:
        loaded = self.api.loaded_model(name)
        if version not in ("", loaded.version):
            raise HttpError(404, f"model '{name}' version {version} is not loaded (loaded: {loaded.version})",
                            "unknown_model")

    @staticmethod
    def metadata(loaded: LoadedModel) -> dict[str, object]:
        model = loaded.model
        filled = set(model.manifest.tokenizer.inputs.values()) if model.manifest.tokenizer else set()
        inputs = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}] if filled else []
        inputs += [{"name": s.name, "datatype": datatype(s.dtype), "shape": _shape(s)}
                   for s in model.inputs if s.name not in filled]
        return {"name": loaded.name, "versions": [loaded.version], "platform": f"edgeml_{model.runtime}",
                "inputs": inputs,
                "outputs": [{"name": s.name, "datatype": datatype(s.dtype), "shape": _shape(s)}
                            for s in model.outputs]}


# -- request -----------------------------------------------------------------------------------------
def decode_v2(loaded: LoadedModel, req: Request) -> Call:
    header, binary = _split_body(req)
    doc = parse_json(header)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise HttpError(400, 'an inference request is {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    if len(doc["inputs"]) > MAX_TENSORS:
        raise HttpError(400, f"{len(doc['inputs'])} inputs; at most {MAX_TENSORS} are accepted")
    arrays: dict[str, Array] = {}
    text: list[str] | None = None
    offset = 0
    for item in doc["inputs"]:
        value, offset = _tensor(item, binary, offset)
        if item["name"] == TEXT_INPUT and item["datatype"] == "BYTES" and loaded.model.takes_text:
            text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
        elif item["datatype"] == "BYTES":
            raise HttpError(400, f"input '{item['name']}' is BYTES; this model takes BYTES only as "
                                 f"'{TEXT_INPUT}' of a bundle with a tokenizer")
        else:
            arrays[item["name"]] = value
    if offset != len(binary):
        raise HttpError(400, f"the body carries {len(binary) - offset} binary bytes no input claims "
                             "(binary_data_size must add up to what follows the JSON header)")
    wanted, binary_default = _wanted_outputs(doc)
    call = Call(arrays, text, options={"outputs": wanted, "binary": binary_default, "id": doc.get("id")})
    _sequence(call, doc.get("parameters"), req)
    return call


def _split_body(req: Request) -> tuple[bytes, bytes]:
    length = req.headers.get(HEADER_LENGTH)
    if length is None:
        return req.body, b""
    try:
        n = int(length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(req.body):
        raise HttpError(400, f"Inference-Header-Content-Length {length!r} must be a number of bytes within "
                             f"the {len(req.body)}-byte body")
    return req.body[:n], req.body[n:]


def _tensor(item: object, binary: bytes, offset: int) -> tuple[Array, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
            or not isinstance(item.get("shape"), list) or item.get("datatype") not in (*DATATYPES, "BYTES"):
        raise HttpError(400, "each input needs a name, a shape (list of ints) and a datatype "
                             f"({', '.join([*DATATYPES, 'BYTES'])})")
    name, kind = item["name"], item["datatype"]
    check_names({name: None})
    shape = item["shape"]
    if len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise HttpError(400, f"input '{name}': shape {shape} must be a list of at most 64 non-negative ints")
    count = math.prod(shape)
    size = (item.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise HttpError(400, f"input '{name}': binary_data_size {size!r} runs past the end of the body")
        raw = binary[offset:offset + size]
        return _from_binary(name, kind, shape, count, raw), offset + size
    if "data" not in item:
        raise HttpError(400, f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return _from_json(name, kind, shape, count, item["data"]), offset


def _from_binary(name: str, kind: str, shape: list[int], count: int, raw: bytes) -> Array:
    if kind == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise HttpError(400, f"input '{name}': a BYTES element's 4-byte length is cut short")
            n = int.from_bytes(raw[pos:pos + 4], "little")
            items.append(raw[pos + 4:pos + 4 + n])
            pos += 4 + n
        if pos != len(raw) or len(items) != count:
            raise HttpError(400, f"input '{name}': {len(items)} BYTES elements for shape {shape}")
        return np.asarray(items, dtype=object).reshape(shape)
    dtype = DATATYPES[kind]
    if len(raw) != count * dtype.itemsize:
        raise HttpError(400, f"input '{name}': {len(raw)} bytes; shape {shape} of {kind} needs "
                             f"{count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _from_json(name: str, kind: str, shape: list[int], count: int, data: object) -> Array:
    try:
        if kind == "BYTES":
            arr = np.asarray(data, dtype=object).reshape(-1)
            if not all(isinstance(v, str) for v in arr):
                raise ValueError("BYTES data must be strings")
        else:
            arr = np.asarray(data)
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{kind} data must be numbers")
            if DATATYPES[kind].kind in "iu" and arr.dtype.kind == "f":
                raise ValueError(f"{kind} data holds floating-point numbers")
            arr = arr.astype(DATATYPES[kind]).reshape(-1)
    except (ValueError, TypeError, RecursionError) as exc:
        raise HttpError(400, f"input '{name}': {exc}") from None
    if arr.size != count:
        raise HttpError(400, f"input '{name}': {arr.size} values for shape {shape} ({count} needed)")
    return arr.reshape(shape)


def _sequence(call: Call, params: object, req: Request) -> None:
    """Triton's sequence parameters (or X-Session-Id) -> the agent's session of a stateful model."""
    params = params if isinstance(params, dict) else {}
    seq = params.get("sequence_id")
    session = req.headers.get(SESSION_HEADER)
    if seq not in (None, 0, ""):
        if isinstance(seq, bool) or not isinstance(seq, int | str):
            raise HttpError(400, "parameters.sequence_id must be an integer or a string")
        session = str(seq)
    if session is not None:
        call.session = check_session_id(session)
        call.reset = bool(params.get("sequence_start", False))
        call.end = bool(params.get("sequence_end", False))


# -- response ----------------------------------------------------------------------------------------
def encode_v2(loaded: LoadedModel, call: Call, result: StreamResult, req: Request) -> Response:
    wanted = dict(call.options.get("outputs") or {})  # type: ignore[call-overload]
    binary = bool(call.options.get("binary"))
    outputs = result.outputs
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise HttpError(400, f"unknown output(s) {', '.join(unknown)}; the model returns {', '.join(outputs)}")
    names = list(wanted) or list(outputs)
    body: dict[str, object] = {"model_name": loaded.name, "model_version": loaded.version, "outputs": []}
    if isinstance(call.options.get("id"), str):
        body["id"] = call.options["id"]
    if result.frames is not None:
        body["parameters"] = {"frames": result.frames, "pending_samples": result.pending}
    chunks: list[bytes] = []
    for name in names:
        arr = np.asarray(outputs[name])
        entry: dict[str, object] = {"name": name, "datatype": datatype(arr.dtype), "shape": list(arr.shape)}
        if wanted.get(name, binary):
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        body["outputs"].append(entry)  # type: ignore[attr-defined]
    if not chunks:
        return json_response(200, body)
    resp = json_response(200, body)
    resp.headers["Inference-Header-Content-Length"] = str(len(resp.body))
    return Response(200, resp.body + b"".join(chunks), "application/octet-stream", resp.headers)


def _wanted_outputs(doc: Mapping[str, object]) -> tuple[dict[str, bool], bool]:
    """The outputs the request names (each binary or not) and the default for the others."""
    params = doc.get("parameters")
    default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    wanted: dict[str, bool] = {}
    items = doc.get("outputs")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            p = item.get("parameters")
            wanted[item["name"]] = bool(p.get("binary_data", default)) if isinstance(p, dict) else default
    return wanted, default


