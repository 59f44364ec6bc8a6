"""Helpers shared by the statement modules: typed attribute values with the catalog's defaults, the message a
statement acts on, APIM's JSON error bodies, and a ``PolicyError`` that carries the response APIM answers with."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from ...errors import PolicyError
from ..catalog import default_of
from ..context import Body, Headers, Response
from ..engine import PolicyRun, Scope, evaluate, evaluate_now, evaluate_string, evaluate_string_now, memo, prepared
from ..model import Statement, Value


class ResponseError(PolicyError):
    """A policy failure that already decided the caller's answer (check-header's and validate-jwt's
    ``{"statusCode": N, "message": …}``); the engine makes it ``context.Response`` while on-error runs."""

    def __init__(self, source: str, message: str, reason: str, response: Response) -> None:
        super().__init__(source, message, reason)
        self.response = response


def json_response(status: int, message: str, headers: list[tuple[str, str]] | None = None, *,
                  one_line: bool = False) -> Response:  # fmt: skip
    """The gateway's own error body: ``{"statusCode": N, "message": "…"}`` as JSON. ``one_line`` is the throttling
    policies' form, ``{ "statusCode": 429, "message": "…" }`` with ``Content-Type: application/json``, as a real 429
    shows it (its Content-Length is exactly that)."""
    payload = {"statusCode": status, "message": message}
    text = "{ " + json.dumps(payload)[1:-1] + " }" if one_line else json.dumps(payload, indent=4)
    body = text.encode()
    return Response(
        status_code=status,
        status_reason=reason_phrase(status),
        headers=Headers([("Content-Type", "application/json" if one_line else "application/json; charset=utf-8"),
                         *(headers or [])]),
        body=Body(body, "application/json"),
    )


def reason_phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def status_name(code: int) -> str:
    """.NET's ``HttpStatusCode`` name (``OK``, ``NotFound``, ``InternalServerError``), as APIM's traces show it."""
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        return str(code)
    return phrase if phrase.isupper() else "".join(w[:1].upper() + w[1:] for w in phrase.replace("-", " ").split())


def _default(stmt: Statement, name: str, parent: str | None) -> str | None:
    if parent is not None:
        return default_of(parent, name, stmt.name)
    return default_of(stmt.name, name)


async def str_attr(
    run: PolicyRun, stmt: Statement, name: str, scope: Scope, *, source: str | None = None, parent: str | None = None
) -> str | None:
    """An attribute as a string (expression evaluated), or the catalog's documented default."""
    value = stmt.attrs.get(name)
    if value is None:
        return memo(stmt, ("default", name, parent), lambda: _default(stmt, name, parent))
    return await evaluate_string(run, value, source or stmt.name, scope)


def to_int(raw: Any, name: str, source: str) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise PolicyError(source, f"The '{name}' attribute must be an integer (got {raw!r}).",
                          "ExpressionValueEvaluationFailure")  # fmt: skip
    try:
        return int(str(raw).strip())
    except ValueError:
        raise PolicyError(source, f"The '{name}' attribute must be an integer (got {raw!r}).",
                          "ExpressionValueEvaluationFailure") from None  # fmt: skip


def to_bool(raw: Any, name: str, source: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw if raw is not None else "false").strip().lower()
    if text not in ("true", "false"):
        raise PolicyError(source, f"The '{name}' attribute must be true or false (got {raw!r}).",
                          "ExpressionValueEvaluationFailure")  # fmt: skip
    return text == "true"


async def _typed_attr[T](
    run: PolicyRun, stmt: Statement, name: str, scope: Scope, source: str | None, parent: str | None,
    convert: Callable[[Any, str, str], T],
) -> T:  # fmt: skip
    """A literal or defaulted attribute is converted once per statement; an expression on every evaluation."""
    value = stmt.attrs.get(name)
    src = source or stmt.name
    if value is not None and value.expression is not None:
        return convert(await evaluate(run, value, src, scope), name, src)
    return literal_attr(stmt, name, convert, source, parent)


def literal_attr[T](
    stmt: Statement, name: str, convert: Callable[[Any, str, str], T], source: str | None = None,
    parent: str | None = None,
) -> T:  # fmt: skip
    """A literal or absent attribute converted, with the catalog's default looked up, once per statement (raises,
    and is not kept, when the literal is not valid)."""
    value = stmt.attrs.get(name)
    src = source or stmt.name
    return memo(stmt, (convert, name, parent, src), lambda: convert(_literal(stmt, value, name, parent), name, src))


def literal_attrs[T](stmt: Statement, build: Callable[[Statement], T], *names: str) -> T | None:
    """``build(stmt)`` kept with the statement when none of ``names`` is an expression and ``build`` (made of
    ``literal_attr``) accepts the literals; None, then the handler evaluates its attributes on each flow."""
    return memo(stmt, (literal_attrs, build), _all_literal, stmt, build, names)


def _all_literal[T](stmt: Statement, build: Callable[[Statement], T], names: tuple[str, ...]) -> T | None:
    if any(v is not None and v.expression is not None for v in map(stmt.attrs.get, names)):
        return None
    try:
        return build(stmt)
    except PolicyError:
        return None


def _literal(stmt: Statement, value: Value | None, name: str, parent: str | None) -> str | None:
    return _default(stmt, name, parent) if value is None else value.text


async def int_attr(
    run: PolicyRun, stmt: Statement, name: str, scope: Scope, *, source: str | None = None, parent: str | None = None
) -> int | None:
    return await _typed_attr(run, stmt, name, scope, source, parent, to_int)


async def bool_attr(
    run: PolicyRun, stmt: Statement, name: str, scope: Scope, *, source: str | None = None, parent: str | None = None
) -> bool:
    return await _typed_attr(run, stmt, name, scope, source, parent, to_bool)


def current_response(run: PolicyRun) -> Response:
    """``context.Response``: the backend's (outbound), the error response (on-error) or the one return-response is
    building. In inbound, before any backend answered, an empty 200 is created, as APIM's set-status does."""
    if run.context.response is None:
        run.context.response = Response(200, "OK", Headers(), Body(b""))
    return run.context.response


def body_bytes(value: Any) -> bytes:
    """An expression or literal result as body bytes (``byte[]`` stays binary, everything else ``ToString()``)."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    from ..expressions import to_policy_string

    return to_policy_string(value).encode()


def value_texts(stmt: Statement) -> tuple[Value | None, ...]:
    """The texts of the ``<value>`` children (a ``prepared`` builder)."""
    return tuple(v.text for v in stmt.children_named("value"))


def evaluated(run: PolicyRun, texts: tuple[Value | None, ...], source: str, scope: Scope) -> tuple[str, ...]:
    """``value_texts`` evaluated as strings; null results are dropped. A tuple of strings: the trace keeps it, and
    the garbage collector stops visiting a tuple of plain values (a list it visits for as long as the flow lives)."""
    if len(texts) == 1:  # the usual one <value>
        value = evaluate_now(run, texts[0], source, scope, True)
        return () if value is None else (value,)
    values: list[str] = []
    for text in texts:
        value = evaluate_string_now(run, text, source, scope)
        if value is not None:
            values.append(value)
    return tuple(values)


def value_children(run: PolicyRun, stmt: Statement, source: str, scope: Scope) -> tuple[str, ...]:
    """The ``<value>`` children of set-header / set-query-parameter, evaluated; null results are dropped."""
    return evaluated(run, prepared(stmt, value_texts), source, scope)


def apply_exists_action(target: Any, name: str, values: Sequence[str], action: str) -> bool:
    """``exists-action`` (override / skip / append / delete) on a header or query collection, as APIM applies it
    (override with no value removes the name); returns whether the name was there before."""
    if action == "delete":
        return target.remove(name)  # type: ignore[no-any-return]
    if action == "append":
        exists = name in target
        for value in values:
            target.append(name, value)
        return exists
    if action == "skip" and name in target:
        return True
    # override (or skip of a name that is not there): the values replace the name's; none remove it
    return target.set(name, values) if values else target.remove(name)  # type: ignore[no-any-return]
