"""Policies that shape the request or the answer: return-response (with set-status/set-header/set-body), set-status,
set-body, set-method, and trace (custom trace entries). mock-response lives with the validation policies: it answers
from the API definition's examples."""

from __future__ import annotations

from ...errors import PolicyError
from ..context import Body, Headers, Response
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate, evaluate_string, run_statements
from ..model import Statement
from ._common import body_bytes, current_response, int_attr, reason_phrase, status_name, str_attr


async def set_status(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Status code and reason of ``context.Response`` (the backend's, the error response, or return-response's)."""
    code = await int_attr(run, stmt, "code", scope)
    if code is None or not 100 <= code <= 999:
        raise PolicyError("set-status", f"The status code {code!r} is not a valid HTTP status code.",
                          "ExpressionValueEvaluationFailure")
    reason = await str_attr(run, stmt, "reason", scope)
    if reason is None:
        reason = reason_phrase(code)
    response = current_response(run)
    response.status_code = code
    response.status_reason = reason
    run.trace.add(scope.section, "set-status", {
        "message": [f"Response status code was set to {code}", f"Response status reason was set to '{reason}'"],
    })


async def set_body(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """The body of the request (inbound/backend, send-request) or of the response (outbound, on-error, return)."""
    template = (stmt.attr("template") or "none").strip().lower()
    if template == "liquid":
        from .transform import liquid_body, message_of

        data = await liquid_body(run, stmt, scope, message_of(run, scope))
    else:
        data = body_bytes(await evaluate(run, stmt.text, "set-body", scope))
    if scope.request is not None:
        target = scope.request
        target.body = Body(data, target.body.content_type if target.body else None)
        where = "request"
    else:
        response = current_response(run)
        response.body = Body(data, response.body.content_type if response.body else None)
        where = "response"
    run.trace.add(scope.section, "set-body", {
        "message": f"The {where} body was set ({len(data)} bytes).", **UNVERIFIED,
    })


async def set_method(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    method = (await evaluate_string(run, stmt.text, "set-method", scope) or "").strip().upper()
    if not method or not all(c.isalpha() or c == "-" for c in method):
        raise PolicyError("set-method", f"'{method}' is not a valid HTTP method.", "ExpressionValueEvaluationFailure")
    target = scope.request or run.context.request
    target.method = method
    run.trace.add(scope.section, "set-method", {"message": f"Request method was set to {method}.", **UNVERIFIED})


def _copy_response(response: Response) -> Response:
    body = response.body
    return Response(
        response.status_code,
        response.status_reason,
        Headers(response.headers.pairs()),
        Body(body.content, body.content_type) if body is not None else Body(b""),
    )


async def return_response(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Stops the pipeline and answers: ``200 OK`` with no body, or the response held in ``response-variable-name``,
    changed by the set-status / set-header / set-body children."""
    name = stmt.attr("response-variable-name")
    if name:
        held = run.context.variables.get(name)
        if not isinstance(held, Response):
            raise PolicyError("return-response",
                              f"The context variable '{name}' does not hold a response (IResponse).",
                              "ExpressionValueEvaluationFailure")
        response = _copy_response(held)
    else:
        response = Response(200, "OK", Headers(), Body(b""))
    run.context.response = response
    await run_statements(run, stmt.children, Scope(scope.section, scope.path, None))
    response = run.context.response or response
    run.response = response
    run.trace.add(scope.section, "return-response", {
        "message": "Return response was applied",
        "response": {
            "status": {"code": status_name(response.status_code), "reason": response.status_reason},
            "headers": [{"name": n, "value": v} for n, v in response.headers.pairs()],
        },
    })


async def trace(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """A custom entry in the request trace, under the policy's ``source``."""
    source = stmt.attr("source") or "trace"
    severity = (stmt.attr("severity") or "verbose").lower()
    message_el = stmt.child("message")
    text = message_el.text if message_el is not None else stmt.text
    message = await evaluate_string(run, text, "trace", scope) or ""
    data: dict[str, object] = {"message": message, "severity": severity}
    metadata = {}
    for m in stmt.children_named("metadata"):
        key = await evaluate_string(run, m.attrs.get("name"), "trace", scope) or ""
        metadata[key] = await evaluate_string(run, m.attrs.get("value"), "trace", scope) or ""
    if metadata:
        data["metadata"] = metadata
    run.trace.add(scope.section, source, {**data, **UNVERIFIED})


HANDLERS = {
    "set-status": set_status,
    "set-body": set_body,
    "set-method": set_method,
    "return-response": return_response,
    "trace": trace,
}
