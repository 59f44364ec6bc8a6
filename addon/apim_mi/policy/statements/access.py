"""Policies that decide who gets in and with which credentials: cors (the gateway answers preflight itself),
ip-filter, validate-azure-ad-token, authentication-certificate and get-authorization-context.

Failures answer with APIM's bodies and record ``context.LastError`` (apim.md §1.4): ip-filter ``CallerIpNotAllowed``
with 403 ``{"statusCode": 403, "message": "Forbidden"}``; validate-azure-ad-token validate-jwt's reasons with
``{"statusCode": 401, "message": …}``. An unmatched CORS request is no error: APIM ends it with an empty 200
(``terminate-unmatched-request``, default true) or lets it through without CORS headers.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from ...errors import PolicyError
from ..context import Authorization, Body, Headers, Response
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate, evaluate_string
from ..model import Statement
from ._common import ResponseError, bool_attr, json_response, str_attr
from .security import (
    _Invalid,
    _openid_keys,
    _verify_signature,
    check_lifetime,
    check_required_claims,
    rejected,
    token_and_header,
)

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
    run.add_response_header("Access-Control-Allow-Origin", allow_origin)
    if credentials:
        run.add_response_header("Access-Control-Allow-Credentials", "true")
    if expose:
        run.add_response_header("Access-Control-Expose-Headers", ",".join(expose))
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


# ---------------------------------------------------------------------------------------- validate-azure-ad-token

AAD = "validate-azure-ad-token"
ENTRA = "https://login.microsoftonline.com"


def entra_authority(run: PolicyRun, explicit: str | None) -> str:
    """``authentication-endpoint``, else the emulator's (when it runs), else azure-identity's ``AZURE_AUTHORITY_HOST``,
    else public Entra ID."""
    found = explicit or run.services.settings.get("entra_authority") or os.environ.get("AZURE_AUTHORITY_HOST") or ENTRA
    return found.strip().rstrip("/")


def _is_guid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def _validate_entra(run: PolicyRun, stmt: Statement, scope: Scope) -> tuple[dict[str, Any], str]:
    tenant = (await str_attr(run, stmt, "tenant-id", scope) or "").strip()
    token, header = await token_and_header(run, stmt, scope)
    authority = entra_authority(run, await str_attr(run, stmt, "authentication-endpoint", scope))
    keys = await _openid_keys(run, f"{authority}/{tenant}/v2.0/.well-known/openid-configuration", header.get("kid"))
    payload = _verify_signature(token, header, [(getattr(k, "key_id", None), k.key) for k in keys.keys])
    check_lifetime(payload, 0, True)
    tid = str(payload.get("tid", ""))
    issuers = {f"https://sts.windows.net/{tid}/", f"{authority}/{tid}/v2.0"}
    if keys.issuer:
        issuers.add(keys.issuer.replace("{tenantid}", tid))
    if payload.get("iss") not in issuers or (_is_guid(tenant) and tid.lower() != tenant.lower()):
        raise _Invalid("TokenIssuerNotAllowed", f"The issuer '{payload.get('iss')}' (tenant '{tid}') is not allowed.")
    audiences = await _texts(run, stmt, "audiences", "audience", scope)
    for app in await _texts(run, stmt, "backend-application-ids", "application-id", scope):
        audiences += [app, f"api://{app}"]
    aud = payload.get("aud")
    if audiences and not any(a in audiences for a in (aud if isinstance(aud, list) else [aud])):
        raise _Invalid("TokenAudienceNotAllowed", f"The audience '{aud}' is not allowed.")
    clients = await _texts(run, stmt, "client-application-ids", "application-id", scope)
    client = payload.get("appid") or payload.get("azp")
    if clients and client not in clients:
        raise _Invalid("TokenClaimValueNotAllowed", f"The client application '{client}' is not allowed.")
    await check_required_claims(run, stmt, scope, payload, AAD)
    return payload, token


async def validate_azure_ad_token(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """validate-jwt for Entra ID tokens: keys and issuer from the tenant's OpenID configuration, plus the client
    (``appid``/``azp``) and backend (audience) application ids."""
    try:
        payload, token = await _validate_entra(run, stmt, scope)
    except _Invalid as e:
        raise await rejected(run, stmt, scope, e) from None
    out = stmt.attr("output-token-variable-name")
    if out:
        from ..expressions.runtime_types import parse_jwt

        run.context.variables[out] = parse_jwt(token)
    shown = {k: payload[k] for k in ("aud", "iss", "appid", "azp", "oid", "tid", "exp") if k in payload}
    run.trace.add(scope.section, AAD, {"message": "JWT validated.", "claims": shown, **UNVERIFIED})


# ------------------------------------------------------------------------------------- authentication-certificate

CERT = "authentication-certificate"


async def _certificate(run: PolicyRun, stmt: Statement, scope: Scope) -> Any:
    from ...clientcerts import CertificateError, from_pfx, load_file

    password = await str_attr(run, stmt, "password", scope)
    try:
        if "body" in stmt.attrs:
            data = await evaluate(run, stmt.attrs["body"], CERT, scope)
            if not isinstance(data, bytes | bytearray):
                raise CertificateError("the 'body' attribute must evaluate to byte[] (a PFX)")
            return from_pfx(bytes(data), password)
        key = await str_attr(run, stmt, "certificate-id", scope) or await str_attr(run, stmt, "thumbprint", scope)
        certificates: dict[str, Any] = run.services.settings.get("certificates") or {}
        entry = certificates.get(key or "") or next(
            (v for k, v in certificates.items() if k.lower() == (key or "").lower()), None)  # fmt: skip
        if entry is None:
            known = ", ".join(sorted(certificates)) or "none declared under certificates:"
            raise CertificateError(f"certificate '{key}' is not declared in the rules file ({known})")
        return load_file(Path(entry["path"]), entry.get("password") or password)
    except CertificateError as e:
        raise PolicyError(CERT, f"The client certificate could not be loaded: {e}", "CertificateNotFound") from None


async def authentication_certificate(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Selects the client certificate the backend connection presents (the forwarded request, or the send-request
    this statement is a child of)."""
    cert = await _certificate(run, stmt, scope)
    request = scope.request or run.context.request
    run.client_certificates[id(request)] = cert
    run.trace.add(scope.section, CERT, {
        "message": f"Client certificate {cert.thumbprint} ({cert.subject}) will be presented to the backend.",
        **UNVERIFIED,
    })


# -------------------------------------------------------------------------------------- get-authorization-context

AUTHZ = "get-authorization-context"


async def get_authorization_context(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """A local credential manager: the connection (provider + authorization id) comes from the rules file's
    ``authorizations:``; its ``Authorization`` (AccessToken, Claims) lands in ``context-variable-name``."""
    provider = (await str_attr(run, stmt, "provider-id", scope) or "").strip()
    authorization = (await str_attr(run, stmt, "authorization-id", scope) or "").strip()
    variable = stmt.attr("context-variable-name") or ""
    ignore_error = await bool_attr(run, stmt, "ignore-error", scope)
    declared: dict[str, Any] = run.services.settings.get("authorizations") or {}
    entry = (declared.get(provider) or {}).get(authorization)
    if entry is None:
        message = (f"Authorization '{authorization}' of provider '{provider}' was not found (declare it under "
                   "authorizations: in the rules file).")  # fmt: skip
        run.trace.add(scope.section, AUTHZ, {"message": message, **UNVERIFIED})
        if ignore_error:
            run.context.variables[variable] = None
            return
        raise PolicyError(AUTHZ, message, "AuthorizationNotFound")
    token = str(entry.get("access_token", ""))
    run.add_secret(token)
    run.context.variables[variable] = Authorization(token, dict(entry.get("claims") or {}))
    run.trace.add(scope.section, AUTHZ, {
        "message": f"Authorization '{authorization}' of provider '{provider}' is stored in context variable "
                   f"'{variable}'.",
        **UNVERIFIED,
    })


HANDLERS = {
    "cors": cors,
    "ip-filter": ip_filter,
    AAD: validate_azure_ad_token,
    CERT: authentication_certificate,
    AUTHZ: get_authorization_context,
}
