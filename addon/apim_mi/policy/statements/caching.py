"""Caching: the response cache (cache-lookup / cache-store) and the value cache (cache-lookup-value,
cache-store-value, cache-remove-value), in the gateway's in-process store (``GatewayState``).

APIM's ``caching-type`` chooses between the built-in cache and an external Redis-compatible one; here
``internal``, ``external`` and ``prefer-external`` are all served by the one in-process store, shared by every flow
and rule, with a TTL per entry, and the trace says so.
"""

from __future__ import annotations

from ...errors import PolicyError
from ..context import Body, Headers, Response
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate
from ..model import Statement
from ._common import bool_attr, int_attr, str_attr

_STORE = "in-process store (apim-mi serves internal, external and prefer-external caches alike)"


def _store_note(caching_type: str | None) -> dict[str, str]:
    return {"cachingType": caching_type or "prefer-external", "store": _STORE, **UNVERIFIED}


def _fresh(run: PolicyRun, table: dict[str, tuple[object, float]], key: str) -> tuple[bool, object]:
    entry = table.get(key)
    if entry is None:
        return False, None
    if entry[1] <= run.services.state.clock():
        del table[key]
        return False, None
    return True, entry[0]


async def _key(run: PolicyRun, stmt: Statement, scope: Scope) -> str:
    key = await str_attr(run, stmt, "key", scope)
    if key is None or key == "":
        raise PolicyError(stmt.name, "The cache key is empty.", "ExpressionValueEvaluationFailure")
    return key


async def cache_lookup_value(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Found: the variable gets the value. Missed: ``default-value`` if given, else the variable is left unset."""
    key = await _key(run, stmt, scope)
    variable = stmt.attr("variable-name") or ""
    found, value = _fresh(run, run.services.state.values, key)
    if not found and "default-value" in stmt.attrs:
        value = await evaluate(run, stmt.attrs["default-value"], stmt.name, scope)
    if found or "default-value" in stmt.attrs:
        run.context.variables[variable] = value
    run.trace.add(scope.section, stmt.name, {
        "message": f"Cache lookup for key '{key}' resulted in a {'hit' if found else 'miss'}"
                   + ("" if found else "; default value assigned" if "default-value" in stmt.attrs else "")
                   + f". Variable '{variable}'" + (" was set." if found or "default-value" in stmt.attrs
                                                   else " was not set."),
        **_store_note(stmt.attr("caching-type")),
    })  # fmt: skip


async def cache_store_value(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    key = await _key(run, stmt, scope)
    value = await evaluate(run, stmt.attrs.get("value"), stmt.name, scope)
    duration = await int_attr(run, stmt, "duration", scope)
    if duration is None or duration < 0:
        raise PolicyError(stmt.name, f"The cache duration must be a non-negative number of seconds (got {duration}).",
                          "ExpressionValueEvaluationFailure")  # fmt: skip
    state = run.services.state
    state.values[key] = (value, state.clock() + duration)
    run.trace.add(scope.section, stmt.name, {
        "message": f"Value stored in cache under key '{key}' for {duration} seconds.", **_store_note(
            stmt.attr("caching-type")),
    })  # fmt: skip


async def cache_remove_value(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    key = await _key(run, stmt, scope)
    existed = run.services.state.values.pop(key, None) is not None
    run.trace.add(scope.section, stmt.name, {
        "message": f"Cache key '{key}' " + ("removed." if existed else "was not in the cache."),
        **_store_note(stmt.attr("caching-type")),
    })  # fmt: skip


# -- the response cache ------------------------------------------------------------------------------------------

_LOOKUP = "cache-lookup"


async def _response_key(run: PolicyRun, stmt: Statement, scope: Scope) -> str:
    """What a cached response varies by: method and URL path, the query parameters named (all of them when none
    is named, as APIM documents), the headers named, and the developer / developer groups when asked."""
    request = run.context.request
    names = [(c.text.text if c.text else "").strip() for c in stmt.children_named("vary-by-query-parameter")]
    wanted = [n for part in names for n in part.split(";") if n.strip()]
    query = request.url.query
    params = sorted((n, v) for n, v in query.pairs() if not wanted or n in wanted)
    headers = []
    for c in stmt.children_named("vary-by-header"):
        name = (c.text.text if c.text else "").strip()
        headers.append((name.lower(), ",".join(request.headers.get_all(name))))
    parts = [request.method, request.url.authority.lower(), request.url.path, repr(params), repr(sorted(headers))]
    if await bool_attr(run, stmt, "vary-by-developer", scope):
        user = run.context.user
        sub = run.context.subscription
        parts.append("developer=" + (user.id if user else sub.id if sub else ""))
    if await bool_attr(run, stmt, "vary-by-developer-groups", scope):
        user = run.context.user
        parts.append("groups=" + ",".join(sorted(g.id for g in user.groups)) if user else "groups=")
    return "\x1f".join(parts)


#: APIM's trace on a miss, verbatim (quoted in MicrosoftDocs/azure-docs#43964, with the removed Cache-Control).
MISS = ("Cache lookup resulted in a miss. Cache headers listed below were removed from the request to prompt the "
        "backend service to send back a complete response.")
#: What a miss removes so the backend answers in full: Cache-Control as the quoted trace shows, and (inferred) the
#: conditional-request headers that would let the backend answer 304.
_CACHE_HEADERS = ("Cache-Control", "Pragma", "If-Modified-Since", "If-None-Match", "If-Match", "If-Unmodified-Since",
                  "If-Range")  # fmt: skip


def _strip_cache_headers(headers: Headers) -> list[dict[str, str]]:
    removed = [{"name": name, "value": value} for name, value in headers.pairs()
               if name.lower() in {h.lower() for h in _CACHE_HEADERS}]  # fmt: skip
    for name in _CACHE_HEADERS:
        headers.remove(name)
    return removed


def _downstream(response: Response, kind: str, must_revalidate: bool, max_age: int | None) -> None:
    """``downstream-caching-type`` private/public: the Cache-Control header the caller gets."""
    if kind not in ("private", "public"):
        return
    value = (
        kind
        + (f", max-age={max_age}" if max_age is not None else "")
        + (", must-revalidate" if must_revalidate else "")
    )
    response.headers.set("Cache-Control", [value])


async def cache_lookup(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """A GET whose key is in the cache is answered from it (the backend is not called); otherwise the key is kept
    for cache-store in outbound."""
    kind = (await str_attr(run, stmt, "downstream-caching-type", scope) or "none").strip().lower()
    must_revalidate = await bool_attr(run, stmt, "must-revalidate", scope)
    note = _store_note(stmt.attr("caching-type"))
    if run.context.request.method.upper() != "GET":
        run.trace.add(scope.section, _LOOKUP, {"message": "Only GET requests are cached: cache lookup skipped.",
                                               **note})  # fmt: skip
        return
    key = await _response_key(run, stmt, scope)
    run.extras["cache-lookup"] = (key, kind, must_revalidate)
    found, cached = _fresh(run, run.services.state.responses, key)
    if not found or not isinstance(cached, tuple):
        removed = _strip_cache_headers(run.context.request.headers)
        run.trace.add(scope.section, _LOOKUP, {"message": MISS, "cacheKey": key.replace("\x1f", "&"),
                                               "cacheHeaders": removed, **note})  # fmt: skip
        return
    response, stored_at = cached
    age = int(run.services.state.clock() - stored_at)
    answer = Response(response.status_code, response.status_reason, Headers(response.headers.pairs()),
                      Body(response.body.content if response.body else b""))  # fmt: skip
    answer.headers.set("Age", [str(age)])
    expires = run.services.state.responses[key][1]
    _downstream(answer, kind, must_revalidate, max(0, int(expires - run.services.state.clock())))
    run.extras.pop("cache-lookup", None)
    run.context.response = answer
    run.response = answer
    run.trace.add(scope.section, _LOOKUP, {
        "message": f"Cache lookup resulted in a hit: the cached response ({response.status_code}, {age} s old) is "
                   "returned and the backend is not called.", **note,
    })  # fmt: skip


async def cache_store(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Stores the response for the key cache-lookup computed (200 only, unless ``cache-response="true"``)."""
    duration = await int_attr(run, stmt, "duration", scope)
    cache_any = await bool_attr(run, stmt, "cache-response", scope)
    looked_up = run.extras.get("cache-lookup")
    response = run.context.response
    if looked_up is None or response is None:
        run.trace.add(scope.section, stmt.name, {
            "message": "Nothing is stored: no cache-lookup ran for this request (or it was not a GET).", **UNVERIFIED,
        })  # fmt: skip
        return
    key, kind, must_revalidate = looked_up
    if response.status_code != 200 and not cache_any:
        run.trace.add(scope.section, stmt.name, {
            "message": f"Response with status {response.status_code} is not cached (only 200 unless "
                       "cache-response is true).", **UNVERIFIED,
        })  # fmt: skip
        return
    state = run.services.state
    seconds = duration if duration is not None else 3600
    copy = Response(response.status_code, response.status_reason, Headers(response.headers.pairs()),
                    Body(response.body.content if response.body else b""))  # fmt: skip
    state.responses[key] = ((copy, state.clock()), state.clock() + seconds)
    _downstream(response, kind, must_revalidate, seconds)
    run.trace.add(scope.section, stmt.name, {
        "message": f"Response was stored in the cache for {seconds} seconds.", **_store_note(None),
    })  # fmt: skip


HANDLERS = {
    "cache-lookup": cache_lookup,
    "cache-store": cache_store,
    "cache-lookup-value": cache_lookup_value,
    "cache-store-value": cache_store_value,
    "cache-remove-value": cache_remove_value,
}
