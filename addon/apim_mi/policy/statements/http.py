"""``send-request``: a side request whose ``IResponse`` lands in a context variable (apim.md §3.3).

The request is built from the children in document order (set-url, set-method, set-header, set-body,
authentication-managed-identity — which then acts on *this* request), sent with aiohttp (``trust_env=False``: never
through a proxy from the environment, so never back through apim-mi itself), and stored as a ``Response``. Non-2xx
answers are not errors; connection failures, timeouts and failing children are, unless ``ignore-error="true"``,
which stores null instead.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ...errors import PolicyError
from ..context import Body, Headers, Request, Response, Url
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate_string, run_statements
from ..model import Statement
from ._common import bool_attr, int_attr, str_attr
from .backends import side_send

SOURCE = "send-request"
#: The children that configure the side request itself; any other child is run as a statement against it.
_SELF_CHILDREN = frozenset({"set-url", "set-method"})


async def default_send(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes | None, timeout: float,
    client_cert: Any = None, proxy: str | None = None,
) -> Response:
    """One HTTP exchange with aiohttp (through ``proxy`` if given); raises ``TimeoutError`` or
    ``aiohttp.ClientError`` (``OSError``). ``client_cert`` (authentication-certificate) is presented on the TLS
    connection."""
    import aiohttp
    from multidict import CIMultiDict

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    ssl_context = client_cert.ssl_context() if client_cert is not None else None
    async with (
        aiohttp.ClientSession(trust_env=False, timeout=client_timeout, auto_decompress=True) as session,
        session.request(
            method, url, headers=CIMultiDict(headers), data=body or None, allow_redirects=False, ssl=ssl_context,
            proxy=proxy,
        ) as resp,
    ):
        content = await resp.read()
        out = Headers([(k, v) for k, v in resp.headers.items()])
        return Response(resp.status, resp.reason or "", out, Body(content, resp.headers.get("Content-Type")))


async def side_mode(run: PolicyRun, stmt: Statement, scope: Scope, source: str) -> str:
    """send-request's / send-one-way-request's ``mode``: new or copy."""
    mode = (await str_attr(run, stmt, "mode", scope, source=source) or "new").strip().lower()
    if mode not in ("new", "copy"):
        raise PolicyError(source, f"mode must be 'new' or 'copy' (got '{mode}').", "ExpressionValueEvaluationFailure")
    return mode


async def build_side_request(run: PolicyRun, stmt: Statement, scope: Scope, mode: str) -> Request:
    """The side request its children build; a token one of them gets is not the main request's injection."""
    request = _initial_request(run, scope, mode)
    injections = len(run.injections)
    try:
        await _apply_children(run, stmt, scope, request, mode)
    finally:
        del run.injections[injections:]
    return request


async def send_request(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    mode = await side_mode(run, stmt, scope, SOURCE)
    variable = await str_attr(run, stmt, "response-variable-name", scope, source=SOURCE)
    timeout = await int_attr(run, stmt, "timeout", scope, source=SOURCE)
    ignore_error = await bool_attr(run, stmt, "ignore-error", scope, source=SOURCE)
    try:
        request = await build_side_request(run, stmt, scope, mode)
    except PolicyError as e:
        if not ignore_error or e.reason == "ExpressionValueEvaluationFailure":
            raise
        _ignored(run, scope, variable, e.message)
        return
    response = await _exchange(run, scope, request, float(timeout or 60), ignore_error, variable)
    if variable and response is not None:
        run.context.variables[variable] = response


def _initial_request(run: PolicyRun, scope: Scope, mode: str) -> Request:
    if mode == "copy":
        main = run.context.request
        body = None if scope.section == "outbound" or main.body is None else Body(main.body.content)
        return Request(main.method, main.url.copy(), Headers(main.headers.pairs()), body, main.ip_address)
    return Request("GET", Url.parse("http://invalid/"), Headers(), None)


async def _apply_children(run: PolicyRun, stmt: Statement, scope: Scope, request: Request, mode: str) -> None:
    inner = Scope(scope.section, scope.path, request)
    has_url = mode == "copy"
    for child in stmt.children:
        if child.name == "set-url":
            url = (await evaluate_string(run, child.text, SOURCE, inner) or "").strip()
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise PolicyError(SOURCE, f"The URL '{url}' is not an absolute http(s) URL.",
                                  "ExpressionValueEvaluationFailure")
            request.url = Url.parse(url)
            request.headers.remove("Host")
            has_url = True
        elif child.name == "set-method":
            method = (await evaluate_string(run, child.text, SOURCE, inner) or "").strip().upper()
            if not method:
                raise PolicyError(SOURCE, "set-method is empty.", "ExpressionValueEvaluationFailure")
            request.method = method
        else:
            await run_statements(run, [child], inner)
    if not has_url:
        raise PolicyError(SOURCE, "send-request in mode 'new' needs a set-url.", "ExpressionValueEvaluationFailure")


def _ignored(run: PolicyRun, scope: Scope, variable: str | None, why: str) -> None:
    if variable:
        run.context.variables[variable] = None
    run.trace.add(scope.section, SOURCE, {
        "message": f"The request failed and ignore-error is true: the response variable '{variable}' is null.",
        "error": why,
        **UNVERIFIED,
    })


async def _exchange(
    run: PolicyRun, scope: Scope, request: Request, timeout: float, ignore_error: bool, variable: str | None
) -> Response | None:
    url = str(request.url)
    headers = [(n, v) for n, v in request.headers.pairs() if n.lower() not in ("content-length", "host")]
    body = request.body.content if request.body is not None else None
    run.trace.add(scope.section, SOURCE, {
        "message": f"Sending request to {url}. Timeout set to {timeout:g} seconds.",
        "request": {"method": request.method, "url": url, "headers": [{"name": n, "value": v} for n, v in headers]},
        **UNVERIFIED,
    })
    cert = run.client_certificates.pop(id(request), None)
    extra = {"client_cert": cert} if cert is not None else {}
    try:
        response = await side_send(run, request.method, url, headers, body, timeout, **extra)
    except TimeoutError:
        return _failed(run, scope, ignore_error, variable, "Timeout",
                       "HTTP response status code and headers were not received from the backend within the "
                       f"configured timeout ({timeout:g} seconds).")
    except (OSError, ValueError) as e:
        return _failed(run, scope, ignore_error, variable, "BackendConnectionFailure",
                       f"Could not reach {url}: {type(e).__name__}: {e}")
    except Exception as e:  # aiohttp's errors, an injected sender's: a failed exchange, never a crash
        return _failed(run, scope, ignore_error, variable, "BackendConnectionFailure",
                       f"Could not reach {url}: {type(e).__name__}: {e}")
    run.trace.add(scope.section, SOURCE, {
        "message": f"Response received with status {response.status_code}.",
        "response": {
            "status": {"code": response.status_code, "reason": response.status_reason},
            "headers": [{"name": n, "value": v} for n, v in response.headers.pairs()],
        },
        **UNVERIFIED,
    })
    return response


def _failed(
    run: PolicyRun, scope: Scope, ignore_error: bool, variable: str | None, reason: str, message: str
) -> None:
    if ignore_error:
        _ignored(run, scope, variable, message)
        return None
    raise PolicyError(SOURCE, message, reason)


HANDLERS = {SOURCE: send_request}
