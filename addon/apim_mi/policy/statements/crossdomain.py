"""The legacy cross-domain policies: jsonp (JSON with padding for ``<script>`` clients) and cross-domain (the
Flash/Silverlight policy file the gateway serves).

jsonp wraps the response in ``callback(…);`` when the request's query names a callback; a callback that is not a
JavaScript identifier fails with APIM's ``CallbackParameterInvalid``. cross-domain answers a request for
``/crossdomain.xml`` (a ``<cross-domain-policy>``) or ``/clientaccesspolicy.xml`` (an ``<access-policy>``) with the
document written in the policy; other requests go on. The content types and the 400 are inferred (APIM does not
document them), and the trace says so.
"""

from __future__ import annotations

import re

from ...errors import PolicyError
from ..context import Body, Headers, Response
from ..engine import UNVERIFIED, PolicyRun, Scope
from ..model import Statement
from ._common import ResponseError, body_bytes, json_response, str_attr

#: A JavaScript identifier, optionally dotted (``app.handlers.onData``), as a JSONP callback must be.
_IDENTIFIER = re.compile(r"^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$")
_FILES = {"/crossdomain.xml": "cross-domain-policy", "/clientaccesspolicy.xml": "access-policy"}


async def jsonp(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    name = await str_attr(run, stmt, "callback-parameter-name", scope) or ""
    callback = run.context.request.url.query.get(name) if name else None
    response = run.context.response
    if not callback or response is None:
        run.trace.add(scope.section, "jsonp", {"message": f"No '{name}' query parameter: the response is plain JSON.",
                                               **UNVERIFIED})  # fmt: skip
        return
    if not _IDENTIFIER.match(callback):
        message = f"Value of callback parameter {name} is not a valid JavaScript identifier."
        raise ResponseError("jsonp", message, "CallbackParameterInvalid", json_response(400, message))
    content = response.body.content if response.body is not None else b""
    response.body = Body(callback.encode() + b"(" + content + b");", "application/javascript")
    response.headers.set("Content-Type", ["application/javascript; charset=utf-8"])
    response.headers.remove("Content-Length")
    run.trace.add(scope.section, "jsonp", {
        "message": f"The response is wrapped in the callback '{callback}' (JSONP).", **UNVERIFIED,
    })  # fmt: skip


async def cross_domain(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    path = run.context.request.url.path.lower()
    wanted = next((root for file, root in _FILES.items() if path.endswith(file)), None)
    document = (stmt.text.text if stmt.text is not None else "").strip()
    if wanted is None or f"<{wanted}" not in document:
        return
    if run.context.request.method.upper() not in ("GET", "HEAD"):
        raise PolicyError("cross-domain", f"Only GET serves {path}.", "MethodNotAllowed")
    answer = Response(200, "OK", Headers([("Content-Type", "text/xml; charset=utf-8")]), Body(body_bytes(document)))
    run.context.response = answer
    run.response = answer
    run.trace.add(scope.section, "cross-domain", {
        "message": f"The gateway answers {path} with the policy's <{wanted}> document.", **UNVERIFIED,
    })  # fmt: skip


HANDLERS = {"jsonp": jsonp, "cross-domain": cross_domain}
