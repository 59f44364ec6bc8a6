"""The heart of the product: authentication-managed-identity and the policies it is used with
(set-header, set-variable, choose), plus the structural marker base."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ...credentials import CredentialSpec
from ...errors import PolicyError
from ...tokens import TokenError, TokenKey, TokenResult, token_key
from ...trace import deferred
from ..engine import (
    SKIP,
    Binder,
    Injection,
    PolicyRun,
    Scope,
    evaluate_now,
    evaluate_string_now,
    memo,
    prepared,
    run_statements,
    steps,
)
from ..model import Policy, Statement, Value
from ._common import apply_exists_action, evaluated, value_texts

if TYPE_CHECKING:
    from ..context import Headers

MI = "authentication-managed-identity"
AUTHORITY = "https://login.windows.net/"
NOT_ENABLED = (
    "Managed service identity is not enabled for this service and authentication-managed-identity policy "
    "cannot be used."
)


def _true(text: str | None) -> bool:
    return (text or "false").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class _Mi:
    """An authentication-managed-identity element's attributes, parsed once (``engine.prepared``)."""

    resource: Value | None
    client_id: str
    out_var: str | None
    ignore_error: bool


def _mi(stmt: Statement) -> _Mi:
    return _Mi(stmt.attrs.get("resource"), (stmt.attr("client-id") or "").strip(),
               stmt.attr("output-token-variable-name"), _true(stmt.attr("ignore-error")))  # fmt: skip


def authentication_managed_identity(run: PolicyRun, stmt: Statement, scope: Scope) -> Awaitable[None]:
    """APIM's algorithm (research/apim.md §2.3): token for ``resource``, into Authorization or a variable."""
    return _managed_identity(prepared(stmt, _mi), stmt, run, scope)


async def _managed_identity(mi: _Mi, stmt: Statement, run: PolicyRun, scope: Scope) -> None:
    resource = evaluate_string_now(run, mi.resource, MI, scope) or ""
    client_id, out_var, ignore_error = mi.client_id, mi.out_var, mi.ignore_error
    if client_id.startswith("@"):
        run.warn(scope.section, MI, "client-id holds an expression, which APIM does not evaluate: it is looked up "
                 "literally and fails. Use a named value ({{name}}) instead.")
        run.trace.add(scope.section, MI, {"message": NOT_ENABLED})
        if ignore_error:
            return
        raise PolicyError(MI, NOT_ENABLED, "ManagedIdentityNotEnabled")
    source = run.services.credential_source
    if type(source) is str and mi.resource is not None and mi.resource.expression is None:
        key = memo(stmt, (token_key, source), token_key, source, client_id, resource)  # a name, no secret
    else:
        key = token_key(source, client_id, resource)
    try:
        if key.assertion is not None:
            await _assertion_step(run, key.assertion, scope)
        result = await run.services.tokens.get(key)
    except TokenError as e:
        message = _acquisition(e.key, run.services.settings.get("tenant_id", "")) + " failed."
        run.trace.add(scope.section, MI, {
            "message": message,
            "errorResponse": e.error_response or {"error": e.reason, "error_description": e.message},
        })
        run.add_token_failure(f"{e.reason}: {e.message}")
        if ignore_error:
            if scope.request is not None and "Authorization" in scope.request.headers:
                run.warn(scope.section, MI, "ignore-error=\"true\": no token was obtained, so the client's own "
                         "Authorization header reaches the backend unchanged.")
            return
        raise PolicyError(MI, f"{message} {e.message}", e.reason) from None
    token = result.token
    run.add_secret(token.value)
    claims = token.claims
    _trace_success(run, scope, key, result)
    aud = claims.get("aud")
    if aud and aud != resource:
        run.warn(scope.section, MI, f"The token's audience '{aud}' differs from the requested resource '{resource}'; "
                 "backends that check the audience will reject it.")
    if out_var:
        run.context.variables[out_var] = token.value
        run.trace.add(scope.section, MI, {
            "message": f"Managed identity token is assigned to context variable '{out_var}'.",
            "emulator": "wording not verified against Azure",
        })
        return
    target = _request_headers(scope, MI)
    if "Authorization" in target:
        run.warn(scope.section, MI, "The client's Authorization header was replaced by the managed identity token.")
        target.set("Authorization", [f"Bearer {token.value}"])
    else:
        target.append("Authorization", f"Bearer {token.value}")  # what set() does to a name that is not there
    run.injections.append(Injection("Authorization", key.identity, resource, claims))
    run.trace.add(scope.section, MI, dict(ADDED))


def _acquisition(key: TokenKey, tenant: str, claims: dict[str, Any] | None = None) -> str:
    """APIM's "Obtaining managed identity token using clientId:… AAD Authority:… for … audience" (without the
    outcome); for an app registration, which app, in which tenant, with which credential."""
    claims = claims or {}
    source = key.source
    if isinstance(source, CredentialSpec):
        how = (f"managed identity clientId:{(key.client_id or 'system-assigned').upper()} as federated credential"
               if source.federated else source.type.replace("-", " "))  # fmt: skip
        return (f"Obtaining token for application clientId:{source.client_id.upper()} using {how} AAD Authority:"
                f"{AUTHORITY}{claims.get('tid') or source.tenant_id} for {key.resource} audience")  # fmt: skip
    shown_client = str(claims.get("appid") or claims.get("azp") or key.client_id or "system-assigned").upper()
    return (f"Obtaining managed identity token using clientId:{shown_client} AAD Authority:{AUTHORITY}"
            f"{claims.get('tid') or tenant} for {key.resource} audience")  # fmt: skip


def _trace_success(run: PolicyRun, scope: Scope, key: TokenKey, result: TokenResult) -> None:
    run.trace.add(scope.section, MI, (_OBTAINED, key, result.token.claims, result.cached))


def obtained(key: TokenKey, claims: dict[str, Any], cached: bool) -> dict[str, Any]:
    """The trace data of a token obtained for ``key``, built when the trace is read (``claims``: the token's,
    which never change; never the token)."""
    return {
        "message": _acquisition(key, "", claims) + " succeeded.",
        "errorResponse": None,
        "cached": cached,
        "claims": {k: claims[k] for k in ("aud", "appid", "azp", "oid", "tid", "exp") if k in claims},
    }


_OBTAINED = deferred(obtained)

#: The trace message once the token is in the request's Authorization header.
ADDED = {"message": "Managed identity token is added to Authorization header."}


async def _assertion_step(run: PolicyRun, first: TokenKey, scope: Scope) -> None:
    """Step one of a managed identity as federated credential: its token for the exchange audience, traced; the
    app credential then reuses it from the provider's cache. Raises TokenError like step two."""
    result = await run.services.tokens.get(first)
    run.add_secret(result.token.value)
    _trace_success(run, scope, first, result)


def _request_headers(scope: Scope, source: str) -> Headers:
    if scope.request is None:
        raise PolicyError(source, f"{source} has no request to act on in section '{scope.section}'.")
    return scope.request.headers


def _target_headers(run: PolicyRun, scope: Scope, source: str) -> Headers:
    """set-header acts on the request in inbound/backend (or send-request), on the response afterwards."""
    if scope.request is not None:
        return scope.request.headers
    response = run.context.response
    if response is None:
        raise PolicyError(source, f"{source} has no response to act on in section '{scope.section}'.")
    return response.headers


@dataclass(frozen=True, slots=True)
class _SetHeader:
    """A set-header element, resolved once (``engine.prepared``): its name when literal, its exists-action and the
    texts of its ``<value>`` children."""

    name: str | None  # None: an expression, evaluated per flow
    action: str
    values: tuple[Value | None, ...]


def _set_header(stmt: Statement) -> _SetHeader:
    name = stmt.attrs.get("name")
    return _SetHeader(name.text if name is not None and name.expression is None else None,
                      (stmt.attr("exists-action") or "override").lower(),
                      value_texts(stmt))  # fmt: skip


def set_header(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    _apply_set_header(prepared(stmt, _set_header), stmt, run, scope)


def _apply_set_header(plan: _SetHeader, stmt: Statement, run: PolicyRun, scope: Scope) -> None:
    name = plan.name
    if name is None:
        name = evaluate_string_now(run, stmt.attrs.get("name"), "set-header", scope) or ""
    action = plan.action
    values = evaluated(run, plan.values, "set-header", scope)
    if _line_break(name, values):
        raise PolicyError("set-header", f"Header '{name}' contains a line break (CR or LF), which is not allowed.")
    headers = _target_headers(run, scope, "set-header")
    exists = apply_exists_action(headers, name, values, action)
    if scope.request is not None and _carries_token(values, run.trace.secrets) and (action != "skip" or not exists):
        if exists and action == "override":
            run.warn(scope.section, "set-header", f"The client's {name} header was replaced by the token.")
        run.injections.append(Injection(name, "", "", {}))
    run.trace.add(scope.section, "set-header", (_SET_HEADER_ENTRY, name, action, exists, values))


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """A set-header whose name and values are all literal (without CR or LF): what it does depends on the headers
    alone, so it can run on them directly, without an evaluation, a scope or a statement list of the engine."""

    name: str
    action: str
    values: tuple[str, ...]


def _header_edit(stmt: Statement) -> HeaderEdit | None:
    """The set-header's ``HeaderEdit``, or None when it needs the engine (an expression, a line break: an error)."""
    plan = _set_header(stmt)
    if plan.name is None or any(v is not None and v.expression is not None for v in plan.values):
        return None
    values = tuple(v.text for v in plan.values if v is not None)  # what ``evaluated`` returns for literals
    if _line_break(plan.name, values):
        return None
    return HeaderEdit(plan.name, plan.action, values)


def header_edits(policy: Policy, section: str) -> tuple[HeaderEdit, ...] | None:
    """The section as literal header edits, in order, when that is all it holds (``<base/>`` left at the global scope
    runs nothing); None when any statement needs the engine. Worked out once per policy and section."""
    key = ("header-edits", section)
    found = policy.compiled.get(key, _UNKNOWN)
    if found is _UNKNOWN:
        edits = tuple(_header_edit(step.stmt) if step.stmt.name == "set-header" and not step.too_deep else None
                      for step in steps(policy, policy.sections.get(section, []), ""))  # fmt: skip
        found = policy.compiled[key] = None if None in edits else edits
    return found  # type: ignore[no-any-return]


_UNKNOWN = object()


def apply_header_edits(run: PolicyRun, edits: tuple[HeaderEdit, ...], headers: Headers, section: str) -> None:
    """``header_edits`` on ``headers``, with the trace entries set-header writes: what running the section does."""
    for edit in edits:
        name, action, values = edit.name, edit.action, edit.values
        exists = apply_exists_action(headers, name, values, action)
        run.trace.add(section, "set-header", (_SET_HEADER_ENTRY, name, action, exists, values))


def _line_break(name: str, values: tuple[str, ...]) -> bool:
    """Whether the header's name or a value holds CR or LF (each searched where it is: a token's value is not
    copied into one string first)."""
    if "\r" in name or "\n" in name:
        return True
    for value in values:  # noqa: SIM110 (a loop: no generator per set-header)
        if "\r" in value or "\n" in value:
            return True
    return False


def _carries_token(values: tuple[str, ...], secrets: set[str]) -> bool:
    """Whether a value holds a token the policy obtained. ``Bearer <token>`` ends with it: that is a compare, where a
    search for a kilobyte-long token first spends microseconds preparing it."""
    if secrets:
        for value in values:
            for secret in secrets:
                if value.endswith(secret) or secret in value:
                    return True
    return False


def _set_header_entry(name: str, action: str, exists: bool, values: tuple[str, ...]) -> dict[str, Any]:
    return {
        "message": f"Header '{name}': {action}" + (" (header already present, left unchanged)"
                                                    if action == "skip" and exists else ""),
        "header": {"name": name, "value": ", ".join(values)},
        "emulator": "wording not verified against Azure",
    }  # fmt: skip


_SET_HEADER_ENTRY = deferred(_set_header_entry)


def set_variable(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    _assign(stmt.attr("name") or "", stmt.attrs.get("value"), run, scope)


def _assign(name: str, value: Value | None, run: PolicyRun, scope: Scope) -> None:
    run.context.variables[name] = evaluate_now(run, value, "set-variable", scope)


def _branches(stmt: Statement) -> tuple[tuple[tuple[int, Value | None, list[Statement]], ...], Statement | None]:
    """Each ``when``'s number, condition and statements, and the ``otherwise``: looked up once per statement."""
    whens = tuple((i, w.attrs.get("condition"), w.children) for i, w in enumerate(stmt.children_named("when"), 1))
    return whens, stmt.child("otherwise")


def choose(run: PolicyRun, stmt: Statement, scope: Scope) -> Awaitable[None] | None:
    """First ``when`` whose condition is true, else ``otherwise``: the conditions are evaluated now, the branch's
    statements are returned to run."""
    return _chosen(prepared(stmt, _branches), run, scope)


def _chosen(branches: tuple[tuple[tuple[int, Value | None, list[Statement]], ...], Statement | None], run: PolicyRun,
            scope: Scope) -> Awaitable[None] | None:
    whens, otherwise = branches
    for i, condition, children in whens:
        cond = evaluate_now(run, condition, "choose", scope)
        if not isinstance(cond, bool):
            raise PolicyError("choose", f"The condition of when[{i}] did not evaluate to a boolean (got {cond!r}).",
                              "ExpressionValueEvaluationFailure")
        if cond:
            return run_statements(run, children, Scope(scope.section, f"{scope.path}/when[{i}]", scope.request),
                                  own=True)  # fmt: skip
    if otherwise is not None:
        return run_statements(run, otherwise.children, Scope(scope.section, f"{scope.path}/otherwise", scope.request),
                              own=True)  # fmt: skip
    return None


def base(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """``<base/>`` is replaced during composition; one left at the global scope does nothing."""


#: The statements resolved once, ahead of any flow (``engine.Binder``): what each handler above runs per flow, over
#: what it derived from the statement.
BINDERS: dict[str, Binder] = {
    MI: lambda stmt: partial(_managed_identity, _mi(stmt), stmt),
    "set-header": lambda stmt: partial(_apply_set_header, _set_header(stmt), stmt),
    "set-variable": lambda stmt: partial(_assign, stmt.attr("name") or "", stmt.attrs.get("value")),
    "choose": lambda stmt: partial(_chosen, _branches(stmt)),
    "base": lambda stmt: SKIP,
}

HANDLERS = {
    MI: authentication_managed_identity,
    "set-header": set_header,
    "set-variable": set_variable,
    "choose": choose,
    "base": base,
}
