"""Policies that decide who gets in: cors (the gateway answers preflight itself) and ip-filter.

Failures answer with APIM's bodies and record ``context.LastError`` (apim.md §1.4): ip-filter ``CallerIpNotAllowed``
with 403 ``{"statusCode": 403, "message": "Forbidden"}``. An unmatched CORS request is no error: APIM ends it with
an empty 200 (``terminate-unmatched-request``, default true) or lets it through without CORS headers.
"""

from __future__ import annotations

import ipaddress

from ...errors import PolicyError
from ..context import Body, Headers, Response
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate_string
from ..model import Statement
from ._common import ResponseError, bool_attr, json_response, str_attr

#: What APIM allows when <allowed-methods> is absent.
DEFAULT_METHODS = ("GET", "POST")


async def _texts(run: PolicyRun, stmt: Statement, container: str, item: str, scope: Scope) -> list[str]:
    node = stmt.child(container)
    out: list[str] = []
    for child in node.children_named(item) if node is not None else []:
        text = await evaluate_string(run, child.text, stmt.name, scope)
        if text and text.strip():
            out.append(text.strip())
    return out


# ----------------------------------------------------------------------------------------------------------- cors


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    return "*" in allowed or any(origin.lower() == a.rstrip("/").lower() for a in allowed)


def _empty_ok() -> Response:
    return Response(200, "OK", Headers(), Body(b""))


async def cors(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Preflight (OPTIONS + Origin + Access-Control-Request-Method) is answered here; an actual cross-origin request
    goes on and its response gets Access-Control-Allow-Origin (+ credentials, expose-headers)."""
    request = scope.request or run.context.request
    origin = (request.headers.get("Origin") or "").strip()
    if not origin:
        run.trace.add(scope.section, "cors", {"message": "No Origin header: not a cross-origin request.",
                                              **UNVERIFIED})
        return
    credentials = await bool_attr(run, stmt, "allow-credentials", scope)
    terminate = await bool_attr(run, stmt, "terminate-unmatched-request", scope)
    origins = await _texts(run, stmt, "allowed-origins", "origin", scope)
    methods_node = stmt.child("allowed-methods")
    methods = [m.upper() for m in await _texts(run, stmt, "allowed-methods", "method", scope)] or list(DEFAULT_METHODS)
    headers = await _texts(run, stmt, "allowed-headers", "header", scope)
    expose = await _texts(run, stmt, "expose-headers", "header", scope)
    allow_origin = origin if credentials or "*" not in origins else "*"
    wanted_method = (request.headers.get("Access-Control-Request-Method") or "").strip().upper()
    if request.method.upper() == "OPTIONS" and wanted_method:
        wanted_headers = [h.strip() for h in (request.headers.get("Access-Control-Request-Headers") or "").split(",")
                          if h.strip()]  # fmt: skip
        problem = _preflight_problem(origin, origins, wanted_method, methods, wanted_headers, headers)
        if problem:  # with terminate-unmatched-request="false" APIM looks for another cors policy; there is none
            _unmatched(run, scope, problem, True)
            return
        out = Headers([("Access-Control-Allow-Origin", allow_origin)])
        if credentials:
            out.append("Access-Control-Allow-Credentials", "true")
        out.append("Access-Control-Allow-Methods", wanted_method)
        if wanted_headers:
            out.append("Access-Control-Allow-Headers", ",".join(wanted_headers))
        max_age = methods_node.attrs.get("preflight-result-max-age") if methods_node is not None else None
        if max_age is not None:
            age = (await evaluate_string(run, max_age, "cors", scope) or "").strip()
            if age:
                out.append("Access-Control-Max-Age", age)
        run.response = run.context.response = Response(200, "OK", out, Body(b""))
        run.trace.add(scope.section, "cors", {"message": f"Preflight request from origin '{origin}' for "
                                              f"{wanted_method} was answered.", **UNVERIFIED})
        return
    if not _origin_allowed(origin, origins):  # methods and headers are the preflight's business
        simple = request.method.upper() in ("GET", "HEAD")
        _unmatched(run, scope, f"origin '{origin}' is not allowed", terminate and simple)
        return
    run.response_headers.append(("Access-Control-Allow-Origin", allow_origin))
    if credentials:
        run.response_headers.append(("Access-Control-Allow-Credentials", "true"))
    if expose:
        run.response_headers.append(("Access-Control-Expose-Headers", ",".join(expose)))
    run.trace.add(scope.section, "cors", {"message": f"Cross-origin request from '{origin}' is allowed; the "
                                          "response gets the CORS headers.", **UNVERIFIED})


def _preflight_problem(origin: str, origins: list[str], method: str, methods: list[str], wanted: list[str],
                       headers: list[str]) -> str:  # fmt: skip
    if not _origin_allowed(origin, origins):
        return f"origin '{origin}' is not allowed"
    if "*" not in methods and method not in methods:
        return f"method {method} is not allowed"
    allowed = {h.lower() for h in headers}
    missing = [h for h in wanted if "*" not in allowed and h.lower() not in allowed]
    return f"header(s) {', '.join(missing)} not allowed" if missing else ""


def _unmatched(run: PolicyRun, scope: Scope, why: str, terminate: bool) -> None:
    if terminate:
        run.response = run.context.response = _empty_ok()
    run.trace.add(scope.section, "cors", {
        "message": f"Cross-origin request does not match the policy ({why}); "
                   + ("terminated with an empty 200 OK." if terminate else "processed without CORS headers."),
        **UNVERIFIED,
    })


# ------------------------------------------------------------------------------------------------------ ip-filter

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress:
    addr = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


async def _matches(run: PolicyRun, stmt: Statement, scope: Scope, caller: IpAddress) -> bool:
    for child in stmt.children:
        try:
            if child.name == "address":
                text = await evaluate_string(run, child.text, "ip-filter", scope) or ""
                if "/" in text:
                    if caller in ipaddress.ip_network(text.strip(), strict=False):
                        return True
                elif caller == _ip(text):
                    return True
            elif child.name == "address-range":
                low = _ip(await str_attr(run, child, "from", scope, source="ip-filter") or "")
                high = _ip(await str_attr(run, child, "to", scope, source="ip-filter") or "")
                if low.version == high.version == caller.version and low <= caller <= high:  # type: ignore[operator]
                    return True
        except ValueError as e:
            raise PolicyError("ip-filter", f"Invalid IP address in the policy: {e}",
                              "ExpressionValueEvaluationFailure") from None
    return False


async def ip_filter(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    action = (await str_attr(run, stmt, "action", scope) or "").strip().lower()
    if action not in ("allow", "forbid"):
        raise PolicyError("ip-filter", f"The 'action' attribute must be 'allow' or 'forbid' (got '{action}').",
                          "ExpressionValueEvaluationFailure")
    address = run.context.request.ip_address
    try:
        caller = _ip(address)
    except ValueError:
        caller = None
    listed = caller is not None and await _matches(run, stmt, scope, caller)
    if listed == (action == "allow"):
        run.trace.add(scope.section, "ip-filter", {"message": f"Caller IP address {address} is allowed.",
                                                   **UNVERIFIED})
        return
    raise ResponseError("ip-filter", f"Caller IP address {address} is not allowed. Access denied.",
                        "CallerIpNotAllowed", json_response(403, "Forbidden"))


HANDLERS = {
    "cors": cors,
    "ip-filter": ip_filter,
}
