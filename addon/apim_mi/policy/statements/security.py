"""Policies that let a request in or keep it out: check-header, validate-jwt, and authentication-basic.

Failures answer ``{"statusCode": N, "message": "<failed-…-error-message>"}`` and record APIM's predefined
``context.LastError`` (apim.md §1.4): check-header ``HeaderNotFound`` / ``HeaderValueNotAllowed``; validate-jwt
``TokenNotPresent``, ``JwtInvalid``, ``TokenSignatureInvalid``, ``TokenSignatureKeyNotFound``, ``TokenExpired``,
``TokenAudienceNotAllowed``, ``TokenIssuerNotAllowed``, ``TokenClaimNotFound``, ``TokenClaimValueNotAllowed``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ...errors import PolicyError
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate_string
from ..model import Statement
from ._common import ResponseError, bool_attr, int_attr, json_response, str_attr


def _request(run: PolicyRun, scope: Scope) -> Any:
    return scope.request or run.context.request


# ------------------------------------------------------------------------------------------------- check-header


async def check_header(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    name = await str_attr(run, stmt, "name", scope) or ""
    code = await int_attr(run, stmt, "failed-check-httpcode", scope) or 401
    message = await str_attr(run, stmt, "failed-check-error-message", scope) or ""
    ignore_case = await bool_attr(run, stmt, "ignore-case", scope)
    allowed = []
    for v in stmt.children_named("value"):
        text = await evaluate_string(run, v.text, "check-header", scope)
        if text is not None:
            allowed.append(text)
    headers = _request(run, scope).headers
    values = headers.get_all(name)
    if not values:
        raise ResponseError("check-header", f"Header {name} was not found in the request. Access denied.",
                            "HeaderNotFound", json_response(code, message))
    value = ",".join(values)
    if allowed:
        fold = (lambda s: s.lower()) if ignore_case else (lambda s: s)
        if len(values) != 1 or not any(fold(value) == fold(a) for a in allowed):
            raise ResponseError("check-header", f"Header {name} value of {value} is not allowed. Access denied.",
                                "HeaderValueNotAllowed", json_response(code, message))
    run.trace.add(scope.section, "check-header", {"message": "Header validated.",
                                                  "header": {"name": name, "value": value}})


# ----------------------------------------------------------------------------------------- authentication-basic


async def authentication_basic(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    username = await str_attr(run, stmt, "username", scope) or ""
    password = await str_attr(run, stmt, "password", scope) or ""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    run.add_secret(credentials)
    _request(run, scope).headers.set("Authorization", [f"Basic {credentials}"])
    run.trace.add(scope.section, "authentication-basic", {
        "message": f"Basic credentials of user '{username}' are added to Authorization header.", **UNVERIFIED,
    })


# --------------------------------------------------------------------------------------------------- validate-jwt

JWKS_TTL = 3600.0  # "JWKS is cached for 1 h"
KID_MISS_REFETCH = 300.0  # "refetched at most once per 5 min on a kid miss"
FETCH_TIMEOUT = 10.0


@dataclass
class _Keys:
    fetched: float
    keys: list[Any] = field(default_factory=list)
    issuer: str | None = None


_CACHE: dict[str, _Keys] = {}
_LOCKS: dict[str, asyncio.Lock] = {}


class _Invalid(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def _get_json(run: PolicyRun, url: str) -> Any:
    from .http import default_send

    send: Any = run.services.send or default_send
    try:
        resp = await asyncio.wait_for(send("GET", url, [("Accept", "application/json")], None, FETCH_TIMEOUT),
                                      FETCH_TIMEOUT + 1)
    except Exception as e:
        raise _Invalid("TokenSignatureKeyNotFound", f"Cannot fetch {url}: {type(e).__name__}: {e}") from None
    if resp.status_code != 200:
        raise _Invalid("TokenSignatureKeyNotFound", f"Cannot fetch {url}: HTTP {resp.status_code}")
    try:
        return json.loads(resp.body.content if resp.body else b"")
    except ValueError:
        raise _Invalid("TokenSignatureKeyNotFound", f"{url} did not return JSON") from None


async def _openid_keys(run: PolicyRun, url: str, kid: str | None) -> _Keys:
    """Keys behind an OpenID configuration URL, cached for an hour and refreshed on an unknown ``kid``."""
    import jwt

    lock = _LOCKS.setdefault(url, asyncio.Lock())
    async with lock:
        now = time.monotonic()
        cached = _CACHE.get(url)
        if cached is not None and now - cached.fetched < JWKS_TTL:
            known = {getattr(k, "key_id", None) for k in cached.keys}
            if kid is None or kid in known or now - cached.fetched < KID_MISS_REFETCH:
                return cached
        config = await _get_json(run, url)
        jwks_uri = config.get("jwks_uri") if isinstance(config, dict) else None
        if not jwks_uri:
            raise _Invalid("TokenSignatureKeyNotFound", f"The OpenID configuration at {url} has no jwks_uri.")
        jwks = await _get_json(run, str(jwks_uri))
        keys = []
        for entry in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            try:
                keys.append(jwt.PyJWK.from_dict(entry))
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                continue
        issuer = config.get("issuer") if isinstance(config.get("issuer"), str) else None
        _CACHE[url] = result = _Keys(now, keys, issuer)
        return result


def _b64(text: str) -> bytes:
    s = text.strip()
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=False)
    except (binascii.Error, ValueError):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64_int(text: str) -> int:
    return int.from_bytes(_b64(text.replace("-", "+").replace("_", "/")), "big")


async def _signing_keys(run: PolicyRun, stmt: Statement, scope: Scope) -> list[tuple[str | None, Any]]:
    """(kid, key) pairs from <issuer-signing-keys>: base64 symmetric keys, or RSA ``n``/``e``."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    out: list[tuple[str | None, Any]] = []
    container = stmt.child("issuer-signing-keys")
    for key in container.children_named("key") if container is not None else []:
        kid = await str_attr(run, key, "id", scope, source="validate-jwt")
        n = await str_attr(run, key, "n", scope, source="validate-jwt")
        e = await str_attr(run, key, "e", scope, source="validate-jwt")
        if key.attrs.get("certificate-id") is not None:
            raise PolicyError("validate-jwt", "issuer-signing-keys with certificate-id are not supported by apim-mi.",
                              "PolicyNotSupported")
        try:
            if n and e:
                out.append((kid, RSAPublicNumbers(_b64_int(e), _b64_int(n)).public_key()))
            else:
                text = await evaluate_string(run, key.text, "validate-jwt", scope) or ""
                out.append((kid, _b64(text)))
        except (ValueError, binascii.Error) as err:
            raise PolicyError("validate-jwt", f"An issuer signing key is not valid base64: {err}",
                              "ExpressionValueEvaluationFailure") from None
    return out


async def _texts(run: PolicyRun, stmt: Statement, container: str, item: str, scope: Scope) -> list[str] | None:
    node = stmt.child(container)
    if node is None:
        return None
    out = []
    for child in node.children_named(item):
        text = await evaluate_string(run, child.text, "validate-jwt", scope)
        if text:
            out.append(text.strip())
    return out


async def _token(run: PolicyRun, stmt: Statement, scope: Scope) -> str:
    request = _request(run, scope)
    if "token-value" in stmt.attrs:
        return (await str_attr(run, stmt, "token-value", scope) or "").strip()
    if "query-parameter-name" in stmt.attrs:
        name = await str_attr(run, stmt, "query-parameter-name", scope) or ""
        return (request.url.query.get(name) or "").strip()
    header = await str_attr(run, stmt, "header-name", scope) or "Authorization"
    value = (request.headers.get(header) or "").strip()
    scheme = await str_attr(run, stmt, "require-scheme", scope)
    if header.lower() != "authorization":
        return value
    first, _, rest = value.partition(" ")
    if scheme and first.lower() != scheme.lower():
        raise _Invalid("TokenNotPresent", "JWT not present.")
    return rest.strip() if rest else value


def _verify_signature(token: str, header: dict[str, Any], candidates: list[tuple[str | None, Any]]) -> dict[str, Any]:
    import jwt

    alg = str(header.get("alg", ""))
    kid = header.get("kid")
    keys = [k for i, k in candidates if kid is None or i is None or i == kid]
    if not keys:
        raise _Invalid("TokenSignatureKeyNotFound",
                       f"The signing key of the token (kid '{kid}') was not found among the configured keys.")
    for key in keys:
        try:
            return jwt.decode(token, key=key, algorithms=[alg], options={
                "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False,
            })
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError:
            continue
        except jwt.PyJWTError as e:
            raise _Invalid("JwtInvalid", f"The JWT is not valid: {e}") from None
        except (ValueError, TypeError) as e:
            raise _Invalid("TokenSignatureInvalid", f"The signature could not be checked: {e}") from None
    raise _Invalid("TokenSignatureInvalid", "The JWT signature is invalid.")


def _claim_values(payload: dict[str, Any], name: str, separator: str | None) -> list[str] | None:
    if name not in payload:
        return None
    raw = payload[name]
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        text = item if isinstance(item, str) else json.dumps(item)
        out.extend(p for p in (text.split(separator) if separator else [text]) if p != "")
    return out


def check_lifetime(payload: dict[str, Any], skew: int, require_exp: bool) -> None:
    """``exp`` (required unless ``require_exp`` is false) and ``nbf``, with ``skew`` seconds of tolerance."""
    now = time.time()
    exp = payload.get("exp")
    if exp is None:
        if require_exp:
            raise _Invalid("JwtInvalid", "The JWT has no expiration time (exp) and require-expiration-time is true.")
    elif not isinstance(exp, int | float) or exp + skew < now:
        raise _Invalid("TokenExpired", f"The JWT expired at {exp}.")
    nbf = payload.get("nbf")
    if isinstance(nbf, int | float) and nbf - skew > now:
        raise _Invalid("JwtInvalid", f"The JWT is not valid before {nbf}.")


async def check_required_claims(run: PolicyRun, stmt: Statement, scope: Scope, payload: dict[str, Any],
                                source: str) -> None:  # fmt: skip
    """``<required-claims>``: each claim present, with all (``match="all"``) or any of its ``<value>``s."""
    required = stmt.child("required-claims")
    for claim in required.children_named("claim") if required is not None else []:
        name = await str_attr(run, claim, "name", scope, source=source) or ""
        match = await str_attr(run, claim, "match", scope, source=source, parent="validate-jwt") or "all"
        separator = await str_attr(run, claim, "separator", scope, source=source)
        have = _claim_values(payload, name, separator)
        if have is None:
            raise _Invalid("TokenClaimNotFound", f"The required claim '{name}' is not present.")
        wanted = [await evaluate_string(run, v.text, source, scope) or "" for v in claim.children_named("value")]
        if wanted:
            hits = [w for w in wanted if w in have]
            if (match.lower() == "any" and not hits) or (match.lower() != "any" and len(hits) != len(wanted)):
                raise _Invalid("TokenClaimValueNotAllowed", f"The claim '{name}' has a value that is not allowed.")


async def token_and_header(run: PolicyRun, stmt: Statement, scope: Scope) -> tuple[str, dict[str, Any]]:
    """The JWT the policy names (header, query parameter or token-value) and its unverified JOSE header."""
    import jwt

    token = await _token(run, stmt, scope)
    if not token:
        raise _Invalid("TokenNotPresent", "JWT not present.")
    try:
        return token, jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _Invalid("JwtInvalid", "The JWT is not well formed.") from None


async def rejected(run: PolicyRun, stmt: Statement, scope: Scope, e: _Invalid) -> ResponseError:
    """validate-jwt's and validate-azure-ad-token's answer: failed-validation-httpcode (401) with the configured
    message, or the one naming the problem (the reference's default), and the reason as LastError."""
    code = await int_attr(run, stmt, "failed-validation-httpcode", scope) or 401
    message = await str_attr(run, stmt, "failed-validation-error-message", scope) or e.message
    run.trace.add(scope.section, stmt.name, {"message": e.message, "reason": e.reason, **UNVERIFIED})
    return ResponseError(stmt.name, e.message, e.reason, json_response(code, message))


async def _validate(run: PolicyRun, stmt: Statement, scope: Scope) -> dict[str, Any]:
    import jwt

    token, header = await token_and_header(run, stmt, scope)
    if token.count(".") == 4:
        raise _Invalid("JwtInvalid", "Encrypted tokens (JWE, decryption-keys) are not supported by apim-mi.")
    require_signed = await bool_attr(run, stmt, "require-signed-tokens", scope)
    candidates = await _signing_keys(run, stmt, scope)
    issuers_from_config: list[str] = []
    for config in stmt.children_named("openid-config"):
        url = await evaluate_string(run, config.attrs.get("url"), "validate-jwt", scope) or ""
        keys = await _openid_keys(run, url, header.get("kid"))
        candidates.extend((getattr(k, "key_id", None), k.key) for k in keys.keys)
        if keys.issuer and "{" not in keys.issuer:
            issuers_from_config.append(keys.issuer)
    alg = str(header.get("alg", "")).lower()
    if alg == "none":
        if require_signed:
            raise _Invalid("TokenSignatureInvalid", "The JWT is not signed and require-signed-tokens is true.")
        try:
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Invalid("JwtInvalid", "The JWT is not well formed.") from None
    else:
        payload = _verify_signature(token, header, candidates)
    skew = await int_attr(run, stmt, "clock-skew", scope) or 0
    check_lifetime(payload, skew, await bool_attr(run, stmt, "require-expiration-time", scope))
    audiences = await _texts(run, stmt, "audiences", "audience", scope)
    if audiences:
        aud = payload.get("aud")
        token_auds = aud if isinstance(aud, list) else [aud]
        if not any(a in audiences for a in token_auds):
            raise _Invalid("TokenAudienceNotAllowed", f"The audience '{aud}' is not allowed.")
    issuers = await _texts(run, stmt, "issuers", "issuer", scope) or issuers_from_config
    if issuers and payload.get("iss") not in issuers:
        raise _Invalid("TokenIssuerNotAllowed", f"The issuer '{payload.get('iss')}' is not allowed.")
    await check_required_claims(run, stmt, scope, payload, "validate-jwt")
    return payload


async def validate_jwt(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    try:
        payload = await _validate(run, stmt, scope)
    except _Invalid as e:
        raise await rejected(run, stmt, scope, e) from None
    out = stmt.attr("output-token-variable-name")
    if out:
        from ..expressions.runtime_types import parse_jwt

        token = await _token(run, stmt, scope)
        run.context.variables[out] = parse_jwt(token)
    shown = {k: payload[k] for k in ("aud", "iss", "sub", "appid", "oid", "tid", "exp") if k in payload}
    run.trace.add(scope.section, "validate-jwt", {"message": "JWT validated.", "claims": shown, **UNVERIFIED})


HANDLERS = {
    "check-header": check_header,
    "authentication-basic": authentication_basic,
    "validate-jwt": validate_jwt,
}
