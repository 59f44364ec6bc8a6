"""APIM's request-tracing protocol, served by the proxy itself, plus the built-in trace entries of a flow.

* ``Ocp-Apim-Trace: true`` (legacy) → the response carries ``Ocp-Apim-Trace-Location: <url>``.
* ``Apim-Debug-Authorization: <debug token>`` (current) → the response carries ``Apim-Trace-Id: <id>``; a token
  whose ``ex=yyyyMMddHHmmss`` lies in the past gets ``Apim-Debug-Authorization-Expired`` instead, as in Azure.

The proxy answers the trace itself, through the proxy, to loopback clients only:

* ``GET http://apim-mi.trace/traces/<id>``: the trace JSON, as the legacy blob (``{traceId, traceEntries}``);
* ``POST http://apim-mi.trace/listTrace`` with ``{"traceId": "<id>"}``: the ARM ``listTrace`` answer
  (``{serviceName, traceId, traceEntries}``);
* ``GET http://apim-mi.trace/traces``: the ids kept.

In reverse mode (where the proxy is the server) the same paths live under ``/apim-mi.trace/`` on the proxy's own
address. The last ``KEEP`` traces are kept in memory (APIM kept the last 100 too), never on disk.

Both request headers are consumed, as a gateway directive and a credential: they are removed before the policy
runs and never reach the backend [inferred: APIM documents neither forwarding nor stripping them].
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from . import flowcontext
from .trace import Deferred, Trace, canonical, computed, deferred, scrub

if TYPE_CHECKING:
    from mitmproxy import http

    from .rules import Rule

Fields = tuple[tuple[bytes, bytes], ...]

TRACE_HOST = "apim-mi.trace"
REVERSE_PREFIX = "/" + TRACE_HOST
_REVERSE_PREFIX = REVERSE_PREFIX.encode()
KEEP = 100
SERVICE_NAME = "apim-mi"
TRACE_HEADER = "Ocp-Apim-Trace"
DEBUG_HEADER = "Apim-Debug-Authorization"
#: The request headers that ask for a trace (lower-case, as mitmproxy's header fields may hold them).
ASK_NAMES = frozenset({TRACE_HEADER.lower().encode(), DEBUG_HEADER.lower().encode()})
HIDDEN = "[hidden by apim-mi]"
# Client credentials never shown in a trace (the injected token is scrubbed separately, to "[token redacted]").
SENSITIVE = frozenset({
    "authorization", "proxy-authorization", "cookie", "ocp-apim-subscription-key", "apim-debug-authorization",
    "x-api-key", "x-functions-key",
})  # fmt: skip


#: The outbound trace message of a buffered answer, once it has gone to the client: one object for every flow, since
#: a trace copies an entry's data when it is read and never changes it.
SENT_IN_FULL = {"message": "Response has been sent to the caller in full"}


def _headers(pairs: Any, secrets: Any = None) -> list[dict[str, str]]:
    out = []
    for name, value in pairs:
        if name.lower() in SENSITIVE and not (secrets and any(s and s in value for s in secrets)):
            value = HIDDEN
        out.append({"name": name, "value": value})
    return out


def request_entry(method: str, url: str, fields: Fields) -> dict[str, Any]:
    return {"request": {"method": method, "url": url, "headers": _headers(flowcontext.decoded(fields))}}


def configuration_entry(rule: Rule, scheme: str, host: str, port: int, method: str, path: str) -> dict[str, Any]:
    default_port = {"http": 80, "https": 443}.get(scheme) == port
    return {"configuration": {
        "api": {
            "from": rule.match.path,
            "to": {"scheme": scheme, "host": host, "port": port, "path": "/", "queryString": "",
                   "query": {}, "isDefaultPort": default_port},
            "version": None,
            "revision": "1",
        },
        "operation": {"method": method, "uriTemplate": path.split("?", 1)[0]},
        "user": "-",
        "product": "-",
        "apim-mi": {"rule": rule.name, "definedAt": str(rule.location)},
    }}  # fmt: skip


def forward_entry(timeout: float, method: str, url: str, fields: Fields, secrets: Any) -> dict[str, Any]:
    return {
        "message": f"Request is being forwarded to the backend service. Timeout set to {timeout:g} seconds",
        "request": {"method": method, "url": url,
                    "headers": scrub(_headers(flowcontext.decoded(fields), secrets), secrets)},
    }  # fmt: skip


def response_entry(code: int, reason: bytes, fields: Fields) -> dict[str, Any]:
    """``reason``: as mitmproxy keeps it, decoded here as its ``reason`` property decodes it."""
    return {"response": {"status": {"code": code, "reason": reason.decode("ISO-8859-1")},
                         "headers": _headers(flowcontext.decoded(fields))}}  # fmt: skip


def request_later(flow: http.HTTPFlow, seen: flowcontext.RequestSnapshot | None = None) -> Deferred:
    """The ``api-inspector`` request entry: the request as the proxy received it (client credentials hidden),
    computed when the trace is read from a snapshot taken now (``seen``, if the caller has one)."""
    return (_REQUEST_SEEN, (seen or flowcontext.RequestSnapshot(flow.request)).data)


def request_seen(seen: flowcontext.SnapshotData) -> dict[str, Any]:
    snapshot = flowcontext.RequestSnapshot.of(seen)
    return request_entry(snapshot.request().method, snapshot.url, snapshot.fields)


def configuration_later(rule: Rule, seen: flowcontext.RequestSnapshot) -> Deferred:
    """The ``api-inspector`` configuration entry: APIM's api/operation shape, filled from the matching rule and the
    request as received (``seen``)."""
    return (_CONFIGURATION_SEEN, rule, seen.data)


def configuration_seen(rule: Rule, seen: flowcontext.SnapshotData) -> dict[str, Any]:
    req = flowcontext.RequestSnapshot.of(seen).request()
    return configuration_entry(rule, req.scheme, req.host, req.port, req.method, req.path)


def forward_later(timeout: float, seen: flowcontext.RequestSnapshot, secrets: Any) -> Deferred:
    """The backend ``forward-request`` entry: the request as it leaves (``seen``; an injected token shows as
    redacted)."""
    return (_FORWARD_SEEN, timeout, seen.data, tuple(secrets))


def forward_seen(timeout: float, seen: flowcontext.SnapshotData, secrets: tuple[str, ...]) -> dict[str, Any]:
    snapshot = flowcontext.RequestSnapshot.of(seen)
    return forward_entry(timeout, snapshot.request().method, snapshot.url, snapshot.fields, secrets)


def response_later(flow: http.HTTPFlow) -> Deferred:
    """The backend ``forward-request`` response entry."""
    assert flow.response is not None
    resp = flow.response
    data = resp.data
    return (_RESPONSE_ENTRY, data.status_code, data.reason, data.headers.fields)


def request_data(flow: http.HTTPFlow) -> dict[str, Any]:
    """The request entry, computed now."""
    return computed(request_later(flow))  # type: ignore[no-any-return]


_REQUEST_SEEN, _CONFIGURATION_SEEN = deferred(request_seen), deferred(configuration_seen)
_FORWARD_SEEN, _RESPONSE_ENTRY = deferred(forward_seen), deferred(response_entry)


def _debug_token_expiry(token: str) -> dt.datetime | None:
    """``ex=yyyyMMddHHmmss`` (UTC) of an APIM debug token, if it has one."""
    ex = (parse_qs(token).get("ex") or [""])[0]
    try:
        return dt.datetime.strptime(ex, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


class TraceStore:
    """The last ``keep`` traces, by id (oldest dropped first)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._traces: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, trace_id: str, trace: dict[str, Any]) -> None:
        self._traces[trace_id] = trace
        self._traces.move_to_end(trace_id)
        while len(self._traces) > self.keep:
            self._traces.popitem(last=False)

    def get(self, trace_id: str) -> dict[str, Any] | None:
        return self._traces.get(trace_id)

    def ids(self) -> list[str]:
        return list(self._traces)

    def __len__(self) -> int:
        return len(self._traces)


def _json_response(status: int, body: Any) -> http.Response:
    from mitmproxy import http

    return http.Response.make(
        status, json.dumps(body, indent=4, ensure_ascii=False),
        {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"},
    )  # fmt: skip


class Inspector:
    """Honours the trace request headers on matched flows and answers the trace endpoint."""

    def __init__(self, keep: int = KEEP) -> None:
        self.store = TraceStore(keep)
        self._pending: dict[str, tuple[bool, str | None]] = {}  # flow id -> (legacy asked, debug token state)

    # -- the endpoint ----------------------------------------------------------------------------------------

    @staticmethod
    def _endpoint_path(flow: http.HTTPFlow) -> str | None:
        req = flow.request
        data = req.data  # asked for every request: the raw values, not the decoding properties
        host = data.host  # no other character lower-cases to "a": most hosts are told apart without a new string
        if host[:1] in ("a", "A") and host.lower().rstrip(".") == TRACE_HOST:
            return req.path.split("?", 1)[0]
        if not data.path.startswith(_REVERSE_PREFIX):
            return None
        from mitmproxy.proxy.mode_specs import ReverseMode

        if not isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return None
        path = req.path.split("?", 1)[0]
        if path == REVERSE_PREFIX or path.startswith(REVERSE_PREFIX + "/"):
            return path[len(REVERSE_PREFIX) :] or "/"
        return None

    @classmethod
    def is_endpoint(cls, flow: http.HTTPFlow) -> bool:
        """A request for the trace endpoint (answered in ``request``, never matched against rules)."""
        return cls._endpoint_path(flow) is not None

    def answer(self, flow: http.HTTPFlow) -> bool:
        """Answers a request for the trace endpoint (and returns True); anything else is left alone."""
        path = self._endpoint_path(flow)
        if path is None:
            return False
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        flow.comment = "apim-mi trace endpoint"
        if not flowcontext.is_loopback(peer):
            flow.response = _json_response(403, {"statusCode": 403, "message": "apim-mi serves traces to loopback "
                                                 "clients only."})  # fmt: skip
            return True
        method = flow.request.method.upper()
        trace_id: str | None = None
        listing = False
        if method == "GET" and path.rstrip("/") == "/traces":
            flow.response = _json_response(200, {"traces": self.store.ids()})
            return True
        if method == "GET" and path.startswith("/traces/"):
            trace_id = path[len("/traces/") :].strip("/")
        elif method == "POST" and path.rstrip("/") == "/listTrace":
            listing = True
            try:
                body = json.loads(flow.request.get_text(strict=False) or "{}")
                trace_id = str(body.get("traceId", "")) if isinstance(body, dict) else ""
            except ValueError:
                trace_id = ""
        else:
            flow.response = _json_response(404, {"statusCode": 404, "message": "Use GET /traces/<id> or POST "
                                                 "/listTrace {\"traceId\": \"<id>\"}."})  # fmt: skip
            return True
        trace = self.store.get(trace_id or "")
        if trace is None:
            flow.response = _json_response(404, {"statusCode": 404, "message": f"No trace '{trace_id}' (the last "
                                                 f"{self.store.keep} traces are kept, in memory)."})  # fmt: skip
            return True
        flow.response = _json_response(200, canonical({"serviceName": SERVICE_NAME, **trace}) if listing else trace)
        return True

    # -- the request headers ---------------------------------------------------------------------------------

    def begin(self, flow: http.HTTPFlow) -> None:
        """Takes the trace request headers off a matched flow (APIM consumes them) and remembers what was asked."""
        headers = flow.request.data.headers
        for n, _ in headers.fields:  # a loop, not any() over a generator: asked on every engine-path flow
            if n.lower() in ASK_NAMES:
                break
        else:
            return
        legacy = any(v.strip().lower() == "true" for v in headers.get_all(TRACE_HEADER))
        debug = headers.get(DEBUG_HEADER)
        for name in (TRACE_HEADER, DEBUG_HEADER):
            if name in headers:
                del headers[name]
        if not legacy and not debug:
            return
        state: str | None = None
        if debug:
            expiry = _debug_token_expiry(debug)
            if expiry is not None and expiry < dt.datetime.now(dt.UTC):
                state = "expired:" + expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                state = "ok"
        if len(self._pending) > 10_000:  # flows that never finished (killed); never grow without bound
            self._pending.clear()
        self._pending[flow.id] = (legacy, state)

    def location(self, flow: http.HTTPFlow, trace_id: str) -> str:
        """Where the client can fetch the trace through this proxy."""
        from mitmproxy.proxy.mode_specs import ReverseMode

        if isinstance(flow.client_conn.proxy_mode, ReverseMode) and flow.client_conn.sockname:
            host, port = flow.client_conn.sockname[:2]
            host = f"[{host}]" if ":" in host else host
            scheme = "https" if flow.client_conn.tls_established else "http"
            return f"{scheme}://{host}:{port}{REVERSE_PREFIX}/traces/{trace_id}"
        return f"http://{TRACE_HOST}/traces/{trace_id}"

    def finish(self, flow: http.HTTPFlow, trace: Trace | dict[str, Any]) -> None:
        """Keeps the finished trace if the client asked for it (the APIM document is built only then), and tells
        the client where it is."""
        asked = self._pending.pop(flow.id, None)
        if asked is None or flow.response is None:
            return
        legacy, debug = asked
        trace_id = trace.trace_id if isinstance(trace, Trace) else str(trace.get("traceId", ""))
        if legacy or debug == "ok":
            self.store.put(trace_id, canonical(trace.to_json() if isinstance(trace, Trace) else trace))
        self._announce(flow, asked, trace_id)

    def announce(self, flow: http.HTTPFlow, trace_id: str) -> None:
        """A streamed answer's headers leave before its trace is finished: say now where the trace will be."""
        asked = self._pending.get(flow.id)
        if asked is not None and flow.response is not None:
            self._announce(flow, asked, trace_id)

    def _announce(self, flow: http.HTTPFlow, asked: tuple[bool, str | None], trace_id: str) -> None:
        assert flow.response is not None
        legacy, debug = asked
        if legacy:
            flow.response.headers[TRACE_HEADER + "-Location"] = self.location(flow, trace_id)
        if debug == "ok":
            flow.response.headers["Apim-Trace-Id"] = trace_id
        elif debug is not None:
            flow.response.headers[DEBUG_HEADER + "-Expired"] = (
                f"Debug credentials expired at {debug.split(':', 1)[1]} (apim-mi: the token's ex= field)"
            )
