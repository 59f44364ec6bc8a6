"""Where the request goes: forward-request, set-backend-service, rewrite-uri, set-query-parameter (apim.md §3.5,
§3.6, §4.2).

``context.Request.Url`` is the backend URL in APIM; these policies change it, and the proxy forwards to it. apim-mi
has no API definition, so the "API suffix" APIM strips before appending the operation path is
``context.Api.Path`` when one is configured, and nothing otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from ...backends import Backend
from ...errors import PolicyError
from ..catalog import DAPR_REASON
from ..context import Query, Url
from ..engine import UNVERIFIED, Binder, Bound, PolicyRun, Scope
from ..model import Statement
from ._common import (
    apply_exists_action,
    bool_attr,
    int_attr,
    literal_attr,
    literal_attrs,
    str_attr,
    to_bool,
    to_int,
    value_children,
)
from .backends import ENTITY, apply_entity, call_backend, entity_base, needs_engine_call

_PARAM = re.compile(r"\{([^{}]+)\}")


def _request(run: PolicyRun, scope: Scope) -> Any:
    return scope.request or run.context.request


def _api_relative_path(run: PolicyRun, path: str) -> str:
    """The operation's part of the backend URL's path: without the API's serviceUrl path (an APIM instance's
    ``context.Request.Url`` is serviceUrl + operation path), else without ``context.Api.Path``."""
    api = run.context.api
    base = api.service_url.path.strip("/") if api is not None and api.service_url is not None else ""
    if base and (path.strip("/") == base or path.startswith("/" + base + "/")):
        return path[len(base) + 1 :] or "/"
    prefix = "/" + api.path.strip("/") if api is not None and api.path and api.path.strip("/") else ""
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix):] or "/"
    return path


def _backend_url(run: PolicyRun, backend_id: str) -> str:
    backends = run.services.settings.get("backends") or {}
    entry = backends.get(backend_id)
    if isinstance(entry, dict):
        entry = entry.get("url")
    elif isinstance(entry, Backend):  # credentials, breaker and pool members apply when the request is forwarded
        base = entity_base(backends, entry)
        run.extras[ENTITY] = (entry, base)
        entry = base
    if not entry:
        known = ", ".join(sorted(backends)) or "none configured"
        raise PolicyError("set-backend-service",
                          f"Backend with id '{backend_id}' could not be found (backends: {known}).", "BackendNotFound")
    return str(entry)


BASE = "backend-base"  # run.extras: the base URL the last set-backend-service put into the main request


def _after_previous_base(run: PolicyRun, scope: Scope, url: Url) -> str:
    """The operation path: a second set-backend-service (in a retry, say) replaces the first one's base URL
    instead of appending to it."""
    previous = run.extras.get(BASE)
    if previous and (scope.request is None or scope.request is run.context.request):
        prefix = urlsplit(previous)
        if f"{url.scheme}://{url.authority}".lower() == f"{prefix.scheme}://{prefix.netloc}".lower():
            base_path = prefix.path.rstrip("/")
            if url.path == base_path or url.path.startswith(base_path + "/"):
                return url.path[len(base_path):] or "/"
    return url.path


async def set_backend_service(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """New base URL + the operation's path + the query (apim.md §3.5's worked example)."""
    dapr_id = (stmt.attr("backend-id") or "").strip() == "dapr" and "dapr" not in (run.services.settings.get("backends")
                                                                                  or {})  # fmt: skip
    if "dapr-app-id" in stmt.attrs or dapr_id:
        raise PolicyError("set-backend-service", "Policy 'set-backend-service' with backend-id=\"dapr\" is not "
                          f"supported by apim-mi (declared at {stmt.location}). {DAPR_REASON}",
                          "PolicyNotSupported")  # fmt: skip
    base = await str_attr(run, stmt, "base-url", scope)
    backend_id = None
    run.extras.pop(ENTITY, None)
    if not base:
        backend_id = await str_attr(run, stmt, "backend-id", scope)
        if not backend_id:
            raise PolicyError("set-backend-service", "Either base-url or backend-id is required.",
                              "ExpressionValueEvaluationFailure")
        base = _backend_url(run, backend_id)
    parts = urlsplit(base.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PolicyError("set-backend-service", f"The base URL '{base}' is not an absolute http(s) URL.",
                          "ExpressionValueEvaluationFailure")
    request = _request(run, scope)
    old = request.url
    relative = _api_relative_path(run, _after_previous_base(run, scope, old))
    new = Url.parse(base.strip())
    new.path = new.path.rstrip("/") + (relative if relative.startswith("/") else "/" + relative)
    new.query = Query(old.query.pairs())
    new._raw_query, new._raw_pairs = old._raw_query, old._raw_pairs
    request.url = new
    if scope.request is None or scope.request is run.context.request:
        run.extras[BASE] = f"{new.scheme}://{new.authority}{urlsplit(base.strip()).path.rstrip('/')}"
    if "Host" in request.headers:
        request.headers.set("Host", [new.authority])
    run.trace.add(scope.section, "set-backend-service", {
        "message": f"Backend service URL was changed to {new.scheme}://{new.authority}{new.path}",
        "backendId": backend_id,
        **UNVERIFIED,
    })


async def rewrite_uri(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``template`` is the new path and query; ``{name}`` takes the matched parameter or the query parameter of that
    name. With ``copy-unmatched-params`` (default true) query parameters the template does not use are kept."""
    template = (await str_attr(run, stmt, "template", scope) or "").strip()
    copy_unmatched = await bool_attr(run, stmt, "copy-unmatched-params", scope)
    request = _request(run, scope)
    old_query = request.url.query
    used: set[str] = set()

    def value_of(name: str) -> str | None:
        key = name.strip().lstrip("*")
        matched = {k.lower(): v for k, v in request.matched_parameters.items()}
        if key.lower() in matched:
            return matched[key.lower()]
        if key in old_query:
            used.add(key.lower())
            return old_query.get(key)
        return None

    def substitute(text: str, safe: str) -> str:
        def repl(m: re.Match[str]) -> str:
            v = value_of(m.group(1))
            return "" if v is None else quote(v, safe=safe)

        return _PARAM.sub(repl, text)

    path_t, _, query_t = template.partition("?")
    path = substitute(path_t, "/@:!$&'()*+,;=-._~")
    new_query = Query()
    for part in filter(None, query_t.split("&")):
        name, eq, val = part.partition("=")
        if eq and _PARAM.fullmatch(val.strip()):
            v = value_of(_PARAM.fullmatch(val.strip()).group(1))  # type: ignore[union-attr]
            if v is None:
                continue  # an optional query parameter that was not supplied
            new_query.append(name, v)
        else:
            new_query.append(name, substitute(val, "") if eq else "")
    if copy_unmatched:
        template_names = {n.lower() for n in new_query.names()}
        for n, v in old_query.pairs():
            if n.lower() not in used and n.lower() not in template_names:
                new_query.append(n, v)
    url = request.url.copy()
    prefix = ""
    api = run.context.api
    if api is not None and api.service_url is not None:
        prefix = api.service_url.path.rstrip("/")
    url.path = prefix + (path if path.startswith("/") else "/" + path)
    url.query = new_query
    url._raw_query = url._raw_pairs = None
    request.url = url
    run.trace.add(scope.section, "rewrite-uri", {
        "message": f"Updated request URL path to {url.path}{url.query_string}", **UNVERIFIED,
    })


async def set_query_parameter(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    name = await str_attr(run, stmt, "name", scope) or ""
    action = (await str_attr(run, stmt, "exists-action", scope) or "override").strip().lower()
    values = value_children(run, stmt, "set-query-parameter", scope)
    request = _request(run, scope)
    query = request.url.query
    exists = apply_exists_action(query, name, values, action)
    run.trace.add(scope.section, "set-query-parameter", {
        "message": f"Query parameter '{name}': {action}" + (" (already present, left unchanged)"
                                                             if action == "skip" and exists else ""),
        "parameter": {"name": name, "value": ",".join(values)},
        **UNVERIFIED,
    })


_FORWARD = ("timeout-ms", "timeout", "fail-on-error-status-code", "buffer-response", "follow-redirects")


def _forward_timeout(timeout_ms: int | None, timeout: int | None) -> float:
    return timeout_ms / 1000 if timeout_ms is not None else float(300 if timeout is None else timeout)


def _literal_forward(stmt: Statement) -> tuple[float, bool, bool, bool]:
    """forward-request's options from literal attributes: (timeout, fail-on-error-status-code, buffer-response,
    follow-redirects)."""
    return (
        _forward_timeout(literal_attr(stmt, "timeout-ms", to_int), literal_attr(stmt, "timeout", to_int)),
        literal_attr(stmt, "fail-on-error-status-code", to_bool),
        literal_attr(stmt, "buffer-response", to_bool),
        literal_attr(stmt, "follow-redirects", to_bool),
    )


def forward_request(run: PolicyRun, stmt: Statement, scope: Scope) -> Awaitable[None] | None:
    """Marks the request for forwarding (the proxy sends it once the backend section is done) with its options.
    With literal options (nearly always) no coroutine is made unless there is async work: a backend call by the
    engine, or a backend entity's credentials."""
    return _bind_forward(stmt)(run, scope)


def _bind_forward(stmt: Statement) -> Bound:
    """forward-request resolved once: its literal options (nearly always), else its attributes evaluated per flow."""
    literal = literal_attrs(stmt, _literal_forward, *_FORWARD)
    if literal is None:
        return partial(_forward_evaluated, stmt)
    return partial(_forward_literal, literal)


def _forward_literal(literal: tuple[float, bool, bool, bool], run: PolicyRun, scope: Scope) -> Awaitable[None] | None:
    forward_timeout, run.fail_on_error_status, run.buffer_response, follow_redirects = literal
    return _forward(run, scope, forward_timeout, follow_redirects)


async def _forward_evaluated(stmt: Statement, run: PolicyRun, scope: Scope) -> None:
    timeout_ms = await int_attr(run, stmt, "timeout-ms", scope)
    forward_timeout = _forward_timeout(timeout_ms, await int_attr(run, stmt, "timeout", scope))
    run.fail_on_error_status = await bool_attr(run, stmt, "fail-on-error-status-code", scope)
    run.buffer_response = await bool_attr(run, stmt, "buffer-response", scope)
    follow_redirects = await bool_attr(run, stmt, "follow-redirects", scope)
    pending = _forward(run, scope, forward_timeout, follow_redirects)
    if pending is not None:
        await pending


def _forward(run: PolicyRun, scope: Scope, forward_timeout: float, follow_redirects: bool) -> Awaitable[None] | None:
    if follow_redirects:
        run.warn(scope.section, "forward-request", "follow-redirects=\"true\" is not supported by apim-mi: a 3xx "
                 "from the backend reaches outbound and the client as it is.")
    if needs_engine_call(run, scope):
        return call_backend(run, scope, forward_timeout)
    run.forward = True
    run.forward_timeout = forward_timeout
    return apply_entity(run, scope)


#: forward-request binds its statement once (``engine.Binder``); the others resolve theirs per flow.
BINDERS: dict[str, Binder] = {"forward-request": _bind_forward}

HANDLERS = {
    "forward-request": forward_request,
    "set-backend-service": set_backend_service,
    "rewrite-uri": rewrite_uri,
    "set-query-parameter": set_query_parameter,
}
