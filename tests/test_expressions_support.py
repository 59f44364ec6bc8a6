"""Shared helpers for the expression tests: a synthesized APIM context and a one-call evaluator."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from apim_mi.errors import Location
from apim_mi.policy.context import (
    Api,
    Body,
    Context,
    Deployment,
    Headers,
    LastError,
    Product,
    Request,
    Response,
    Url,
    User,
)
from apim_mi.policy.expressions import (
    CompiledExpression,
    ExpressionRuntimeError,
    compile_expression,
    to_policy_string,
)

LOC = Location("policy.xml", 10, 5)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    h = header or {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    return f"{b64url(json.dumps(h).encode())}.{b64url(json.dumps(payload).encode())}.c2ln"


JWT_PAYLOAD = {
    "aud": "api://demo",
    "iss": "https://sts.windows.net/tenant/",
    "sub": "user-42",
    "exp": 4102444800,
    "iat": 1700000000,
    "jti": "id-1",
    "claim-name": "claim-value",
    "roles": ["reader", "writer"],
    "permissions": ["readEmail", "sendEmail"],
}
JWT = make_jwt(JWT_PAYLOAD)


def make_context(**overrides: Any) -> Context:
    """A request to https://backend.example.com/echo/resource-cached with typical headers, body and variables."""
    from apim_mi.policy.expressions.runtime_types import parse_jwt

    request = Request(
        "POST",
        Url.parse("https://backend.example.com/echo/resource-cached?version=2013-05&x=1&x=2"),
        Headers(
            [
                ("Host", "gateway.example.com"),
                ("User-Agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"),
                ("Authorization", f"Bearer {JWT}"),
                ("Content-Type", "application/json"),
                ("cookie", "a=1; session=xyz; b=2"),
                ("X-Multi", "one"),
                ("x-multi", "two"),
            ]
        ),
        Body(b'{"id": 42, "name": "demo", "items": [1, 2, 3], "nested": {"k": "v"}}'),
        ip_address="203.0.113.7",
        original_url=Url.parse("https://gateway.example.com/api/echo/resource-cached?version=2013-05"),
        matched_parameters={"id": "42"},
    )
    weather = {"lat": 1, "current": {}, "minutely": [], "hourly": [], "daily": [], "alerts": [], "timezone": "UTC"}
    response = Response(
        200,
        "OK",
        Headers([("Cache-Control", "public, max-age=120"), ("Location", "https://backend.example.com/op/1")]),
        Body(json.dumps(weather).encode()),
    )
    variables: dict[str, Any] = {
        "msi-access-token": "tok",
        "isMobile": True,
        "token": "abc",
        "tokenstate": Response(200, "OK", Headers(), Body(b'{"active": false}')),
        "response": Response(200, "OK", Headers(), Body(b'{"status": "ok"}')),
        "accessToken": None,
        "result": Response(200, "OK", Headers([("x-ms-meta-{MyMetadataName1}", "meta")]), Body(b"")),
        "valid-jwt": parse_jwt(JWT),
        "bodySize": "1000",
        "count": 3,
    }
    from apim_mi.policy.expressions.jsonlinq import parse_object

    variables["accessToken"] = parse_object('{"access_token": "at", "expires_in": 3600}')
    ctx = Context(
        request=request,
        response=response,
        variables=variables,
        timestamp=datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        last_error=LastError("configuration", "OperationNotFound", "Unable to match incoming request to an operation."),
        api=Api(id="echo", name="Echo API", path="api", service_url=Url.parse("https://backend.example.com/")),
        product=Product(id="starter", name="Starter"),
        user=User(id="1", email="u@example.com"),
        deployment=Deployment(region="East US", service_name="contoso"),
    )
    for k, v in overrides.items():
        setattr(ctx, k, v)
    return ctx


def ev(source: str, context: Context | None = None) -> Any:
    """Evaluate ``@(source)`` (or a full ``@(...)``/``@{...}`` text) against ``context`` (default: a fresh one)."""
    text = source if source.startswith("@") else f"@({source})"
    return compile_expression(text, LOC).evaluate(context if context is not None else make_context())


#: What differs from one evaluation to the next whoever runs it: only the type is compared.
VARYING = ("UtcNow", ".Now", "NewGuid", "GetHashCode", "Random", "Elapsed", "Timeout")


def outcome(expr: CompiledExpression) -> tuple[Any, ...]:
    """What evaluating ``expr`` against a fresh context shows: value or error, and what it did to the context."""
    import uuid

    from apim_mi.policy.expressions.runtime_types import net_type_name

    context = make_context(request_id=uuid.UUID(int=7))
    varying = any(v in expr.source for v in VARYING)
    try:
        value = expr.evaluate(context)
    except ExpressionRuntimeError as e:
        shown: tuple[Any, ...] = ("error", e.exception_type, None if varying else e.message)
    else:
        shown = ("value", net_type_name(value), None if varying else to_policy_string(value))
    body = context.request.body
    assert body is not None
    return shown, list(context.traces), body.consumed, sorted(context.variables)


def same_as_interpreted(expr: CompiledExpression) -> bool:
    """The expression's compiled closure (``expressions/compiler.py``) and the interpreter agree on it: the same
    value, error and effects. Returns whether it was compiled at all."""
    import dataclasses

    assert outcome(expr) == outcome(dataclasses.replace(expr, closure=None)), expr.source
    return expr.closure is not None
