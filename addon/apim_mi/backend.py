"""Demo backend: a protected API that accepts only Entra-shaped bearer tokens for its audiences.

Every path except ``/_backend/*`` requires ``Authorization: Bearer <jwt>``, validated the way Easy Auth / ASP.NET
JwtBearer do it: RS256 signature against the issuer's JWKS (fetched with aiohttp, cached, refetched for an unknown
``kid`` at most every few seconds), ``aud`` in the accepted audiences (exact string compare: ``X`` and ``X/`` differ),
``iss``, ``exp`` and ``nbf``.

* no token → 401, ``WWW-Authenticate: Bearer realm="…", resource_id="<first audience>"`` (RFC 6750: no error code)
* bad token → 401, ``WWW-Authenticate: Bearer realm="…", error="invalid_token", error_description="…",
  resource_id="…"``; a wrong audience says which audiences were expected
* two ``Authorization`` headers → 400 ``error="invalid_request"``
* valid → 200 JSON ``{"ok", "backend", "method", "path", "query", "claims", "headers", "body_bytes"}``; ``claims`` is
  a safe subset (aud, iss, tid, appid, oid, exp …) and ``headers`` holds header *names* only: the token never
  leaves the process.

Admin (loopback only, unauthenticated): ``GET /_backend/stats``, ``POST /_backend/reset``, ``GET /_backend/health``.
Standalone: ``python -m apim_mi.backend --emulator http://127.0.0.1:8479 --audience api://…``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import ssl as ssl_module
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from aiohttp import web

from .emulator.config import DEFAULT_TENANT_ID
from .emulator.serving import LoopbackServer, ServerThread, require_loopback, serve_until_stopped

log = logging.getLogger("apim_mi.backend")

DEFAULT_PORT = 8480
ALGORITHMS = ("RS256",)
ECHO_CLAIMS = ("aud", "iss", "tid", "appid", "azp", "oid", "sub", "idtyp", "ver", "iat", "nbf", "exp", "xms_mirid",
               "roles")  # fmt: skip
JWKS_MIN_REFRESH = 5.0
LOG_LIMIT = 10_000


@dataclass
class BackendRequest:
    """One request the backend answered (header names only, claims subset only)."""

    time: float
    method: str
    path: str
    query: str
    headers: list[str]
    status: int
    claims: dict[str, Any] | None = None
    error: str | None = None
    error_description: str | None = None


@dataclass
class BackendStats:
    """Counters and the request log; ``stats["key"]`` reads the JSON form ``GET /_backend/stats`` serves."""

    total: int
    accepted: int
    rejected: int
    requests: list[BackendRequest]

    @property
    def claims(self) -> list[dict[str, Any]]:
        """The claims of every accepted token, in order."""
        return [r.claims for r in self.requests if r.claims is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "claims": self.claims,
            "requests": [asdict(r) for r in self.requests],
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]


@dataclass
class _Counters:
    total: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: deque[BackendRequest] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))


class Rejected(Exception):
    """A request the backend refuses: HTTP status, RFC 6750 error code (None = no credentials) and description."""

    def __init__(self, status: int, error: str | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class JwksCache:
    """The issuer's signing keys, fetched once and again only for an unknown ``kid`` (rate-limited)."""

    def __init__(self, jwks_uri: str, *, ssl: ssl_module.SSLContext | None = None,
                 min_refresh: float = JWKS_MIN_REFRESH) -> None:  # fmt: skip
        self.jwks_uri = jwks_uri
        self._ssl = ssl
        self._min_refresh = min_refresh
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and self._may_refresh():
                await self._fetch()
        return self._keys.get(kid)

    def _may_refresh(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at >= self._min_refresh

    async def _fetch(self) -> None:
        if self._session is None:
            # trust_env=False: key fetches must never go through a proxy picked up from the environment.
            self._session = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=10))
        self._fetched_at = time.monotonic()
        self.fetches += 1
        async with self._session.get(self.jwks_uri, ssl=self._ssl if self._ssl is not None else True) as resp:
            resp.raise_for_status()
            document = await resp.json(content_type=None)
        keyset = jwt.PyJWKSet.from_dict(document)
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TokenValidator:
    """Validates a bearer token with pyjwt; failures become :class:`Rejected` with JwtBearer-like descriptions."""

    def __init__(self, jwks: JwksCache, issuers: Sequence[str], audiences: Sequence[str], leeway: float = 0) -> None:
        if not audiences:
            raise ValueError("at least one accepted audience is required")
        if not issuers:
            raise ValueError("at least one accepted issuer is required")
        self.jwks = jwks
        self.issuers = list(issuers)
        self.audiences = list(audiences)
        self.leeway = leeway

    async def validate(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _invalid("The token is malformed") from None
        if header.get("alg") not in ALGORITHMS:
            raise _invalid(f"The algorithm '{header.get('alg')}' is not allowed (expected RS256)")
        key = await self._key(header.get("kid"))
        try:
            return jwt.decode(
                token, key.key, algorithms=list(ALGORITHMS), audience=self.audiences, issuer=self.issuers,
                leeway=self.leeway, options={"require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise self._describe(exc, token) from None

    async def _key(self, kid: Any) -> jwt.PyJWK:
        if not isinstance(kid, str) or not kid:
            raise _invalid("The token header has no 'kid'")
        try:
            key = await self.jwks.get(kid)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            raise Rejected(503, "temporarily_unavailable",
                           f"The signing keys could not be fetched from {self.jwks.jwks_uri}: {exc}") from None
        if key is None:
            raise _invalid(f"The signature key was not found (kid '{kid}')")
        return key

    def _describe(self, exc: jwt.PyJWTError, token: str) -> Rejected:
        claims = jwt.decode(token, options={"verify_signature": False}) if _decodable(token) else {}
        if isinstance(exc, jwt.ExpiredSignatureError):
            return _invalid(f"The token expired at '{_iso(claims.get('exp'))}'")
        if isinstance(exc, jwt.ImmatureSignatureError):
            return _invalid(f"The token is not valid before '{_iso(claims.get('nbf'))}'")
        if isinstance(exc, jwt.InvalidAudienceError):
            expected = ", ".join(f"'{a}'" for a in self.audiences)
            return _invalid(f"The audience '{claims.get('aud')}' is invalid; expected {expected}")
        if isinstance(exc, jwt.InvalidIssuerError):
            expected = ", ".join(f"'{i}'" for i in self.issuers)
            return _invalid(f"The issuer '{claims.get('iss')}' is invalid; expected {expected}")
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return _invalid(f"The token has no '{exc.claim}' claim")
        if isinstance(exc, jwt.InvalidSignatureError):
            return _invalid("The signature is invalid")
        return _invalid(f"The token is invalid: {exc}")


def _invalid(description: str) -> Rejected:
    return Rejected(401, "invalid_token", description)


def _decodable(token: str) -> bool:
    try:
        jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return True


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return str(epoch)
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(value: str) -> str:
    """A quoted-string for WWW-Authenticate: no CR/LF or control characters, quotes and backslashes escaped."""
    clean = "".join(ch for ch in value if ch >= " " and ch != "\x7f")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DemoBackend(LoopbackServer):
    """The protected API; one instance validates against one JWKS for a fixed list of audiences and issuers."""

    _what = "backend"

    def __init__(
        self,
        jwks_uri: str,
        issuer: str | Sequence[str],
        audiences: Sequence[str],
        *,
        leeway: float = 0,
        name: str = "demo-backend",
        jwks_ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        super().__init__()
        issuers = [issuer] if isinstance(issuer, str) else list(issuer)
        self.name = name
        self._validator = TokenValidator(JwksCache(jwks_uri, ssl=jwks_ssl), issuers, list(audiences), leeway)
        self._counters = _Counters()

    @property
    def audiences(self) -> list[str]:
        return list(self._validator.audiences)

    @property
    def issuers(self) -> list[str]:
        return list(self._validator.issuers)

    @property
    def jwks_fetches(self) -> int:
        return self._validator.jwks.fetches

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl: ssl_module.SSLContext | None = None,
        *, allow_remote: bool = False,
    ) -> str:  # fmt: skip
        """Listen (HTTPS when ``ssl`` is given) and return the base URL; non-loopback needs ``allow_remote``."""
        return await self._listen(host, port, ssl, allow_remote=allow_remote)

    async def stop(self) -> None:
        """Stop serving and close the JWKS session (a restart fetches the keys again)."""
        await super().stop()
        await self._validator.jwks.close()

    def stats(self) -> BackendStats:
        c = self._counters
        return BackendStats(c.total, c.accepted, c.rejected, list(c.requests))

    def reset(self) -> None:
        self._counters = _Counters()

    async def validate(self, authorization: str) -> dict[str, Any]:
        """Validate an ``Authorization`` header value; returns the verified claims or raises :class:`Rejected`."""
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(401, None, "No bearer token in the Authorization header")
        return await self._validator.validate(token.strip())

    # -- app -------------------------------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        self._add_admin_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._protected)
        return app

    def _add_admin_routes(self, app: web.Application) -> None:
        """The loopback-only admin API (subclasses add their own routes after it)."""
        app.router.add_get("/_backend/stats", self._admin_stats)
        app.router.add_post("/_backend/reset", self._admin_reset)
        app.router.add_get("/_backend/health", self._admin_health)

    async def _admit(self, request: web.Request, headers: list[str]) -> dict[str, Any] | web.Response:
        """The request's verified claims, or the (logged) rejection to answer with."""
        try:
            return await self._authenticate(request)
        except Rejected as rejected:
            self._log(request, headers, rejected.status, error=rejected)
            return self._reject(rejected)

    async def _protected(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = list(request.headers.keys())
        claims = await self._admit(request, headers)
        if isinstance(claims, web.Response):
            return claims
        echoed = {name: claims[name] for name in ECHO_CLAIMS if name in claims}
        self._log(request, headers, 200, claims=echoed)
        return web.json_response({
            "ok": True,
            "backend": self.name,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "claims": echoed,
            "headers": headers,
            "body_bytes": len(body),
        })

    async def _authenticate(self, request: web.Request) -> dict[str, Any]:
        values = request.headers.getall("Authorization", [])
        if len(values) > 1:
            raise Rejected(400, "invalid_request", f"{len(values)} Authorization headers; exactly one is allowed")
        if not values:
            raise Rejected(401, None, "No Authorization header")
        return await self.validate(values[0])

    def _reject(self, rejected: Rejected) -> web.Response:
        params = [f"realm={_quote(self.name)}"]
        if rejected.error is not None:
            params += [f"error={_quote(rejected.error)}", f"error_description={_quote(rejected.description)}"]
        params.append(f"resource_id={_quote(self._validator.audiences[0])}")
        body = {
            "ok": False,
            "backend": self.name,
            "error": rejected.error or "unauthorized",
            "error_description": rejected.description,
            "expected_audiences": self.audiences,
        }
        headers = {"WWW-Authenticate": "Bearer " + ", ".join(params)} if rejected.status in (400, 401) else None
        return web.json_response(body, status=rejected.status, headers=headers)

    def _log(self, request: web.Request, headers: list[str], status: int, *,
             claims: dict[str, Any] | None = None, error: Rejected | None = None) -> None:  # fmt: skip
        c = self._counters
        c.total += 1
        if status == 200:
            c.accepted += 1
        else:
            c.rejected += 1
        c.requests.append(BackendRequest(
            time=time.time(), method=request.method, path=request.path, query=request.query_string,
            headers=headers, status=status, claims=claims,
            error=(error.error or "unauthorized") if error else None,
            error_description=error.description if error else None,
        ))  # fmt: skip
        log.info("%s %s -> %s%s", request.method, request.path, status, f" ({error.description})" if error else "")

    async def _admin_stats(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response(self.stats().to_json())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        require_loopback(request)
        self.reset()
        return web.json_response({"status": "reset"})

    async def _admin_health(self, request: web.Request) -> web.Response:
        require_loopback(request)
        return web.json_response({"status": "ok", "audiences": self.audiences, "issuers": self.issuers})


class DemoBackendThread(ServerThread[DemoBackend]):
    """``with DemoBackendThread(jwks_uri, issuer, audiences) as backend:`` runs a :class:`DemoBackend` on its own
    event loop in a daemon thread (for sync code and tests whose loop is busy)."""

    def __init__(
        self,
        jwks_uri: str,
        issuer: str | Sequence[str],
        audiences: Sequence[str],
        *,
        ssl: ssl_module.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        leeway: float = 0,
        name: str = "demo-backend",
    ) -> None:
        backend = DemoBackend(jwks_uri, issuer, audiences, leeway=leeway, name=name)
        super().__init__(backend, "apim-mi-demo-backend",
                         lambda: backend.start(host, port, ssl, allow_remote=allow_remote))  # fmt: skip

    @property
    def backend(self) -> DemoBackend:
        return self._server

    @property
    def audiences(self) -> list[str]:
        return self._server.audiences

    def stats(self) -> BackendStats:
        return self._thread.call(self._server.stats)

    def reset(self) -> None:
        self._thread.call(self._server.reset)


# -- standalone ----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jwks-uri", help="JWKS URL of the token issuer")
    source.add_argument("--emulator", metavar="URL", help="base URL of an apim-mi emulator (JWKS and issuer derived)")
    parser.add_argument("--tenant", default=None, help="tenant of --emulator (default: the emulator's default)")
    parser.add_argument("--issuer", action="append", default=[],
                        help="accepted iss (repeatable; default derived from the JWKS URL's tenant)")
    parser.add_argument("--audience", action="append", required=True, help="accepted aud, exact (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = ephemeral")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument("--cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument("--leeway", type=float, default=0, help="clock-skew leeway in seconds for exp/nbf")
    parser.add_argument("--log-level", default="INFO")
    return parser


def resolve_source(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(jwks_uri, issuers) from ``--emulator``/``--jwks-uri`` and ``--issuer``."""
    if args.emulator:
        tenant = args.tenant or DEFAULT_TENANT_ID
        jwks_uri = f"{args.emulator.rstrip('/')}/{tenant}/discovery/v2.0/keys"
    else:
        jwks_uri = args.jwks_uri
    issuers = list(args.issuer)
    if not issuers:
        tenant = urlsplit(jwks_uri).path.strip("/").split("/")[0]
        if not tenant:
            raise ValueError("cannot derive the issuer from the JWKS URL; pass --issuer")
        issuers = [f"https://sts.windows.net/{tenant}/"]
    return jwks_uri, issuers


async def serve(args: argparse.Namespace) -> int:
    jwks_uri, issuers = resolve_source(args)
    ssl_ctx = None
    if args.cert:
        ssl_ctx = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.cert, args.key)
    backend = DemoBackend(jwks_uri, issuers, args.audience, leeway=args.leeway)
    try:
        url = await backend.start(args.host, args.port, ssl_ctx, allow_remote=args.allow_remote)
    except OSError as exc:
        print(f"apim-mi backend: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    line = (f"apim-mi demo backend on {url} | accepts aud {', '.join(args.audience)} | iss {', '.join(issuers)} | "
            f"keys {jwks_uri} | Ctrl-C to stop")  # fmt: skip
    return await serve_until_stopped(backend, line)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m apim_mi.backend``; returns the exit code."""
    description = "Demo backend that accepts only valid Entra-shaped bearer tokens for its audiences."
    parser = add_arguments(argparse.ArgumentParser(prog="python -m apim_mi.backend", description=description))
    return run_cli(parser, argv, serve, "apim-mi backend")


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None,
            serve: Callable[[argparse.Namespace], Awaitable[int]], label: str) -> int:  # fmt: skip
    """Parse, set up logging and serve until stopped: exit code 2 for bad arguments or settings, 0 on Ctrl-C."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    logging.basicConfig(level=str(args.log_level).upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(serve(args))
    except (ValueError, OSError, ssl_module.SSLError) as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
