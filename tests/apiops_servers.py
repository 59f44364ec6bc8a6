"""Local servers for the APIOps tests: an echo backend, and a stand-in for Azure Key Vault's secrets API
(``GET /secrets/{name}[/{version}]?api-version=…``) that validates the caller's bearer token against the emulator's
JWKS (audience ``https://vault.azure.net``) and answers with Key Vault's shapes: ``{"value", "id", "attributes"}``,
and ``{"error": {"code", "message"}}`` with 401/404."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from apim_mi.backend import JwksCache, Rejected, TokenValidator
from apim_mi.emulator.serving import LoopbackServer, ServerThread

VAULT_AUDIENCE = "https://vault.azure.net"


class KeyVaultStandIn(LoopbackServer):
    _what = "Key Vault stand-in"

    def __init__(self, jwks_uri: str, issuer: str, secrets: dict[str, str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.jwks_uri, self.issuer = jwks_uri, issuer
        self.requests: list[dict[str, Any]] = []
        self._validator: TokenValidator | None = None

    def _build_app(self) -> web.Application:
        self._validator = TokenValidator(JwksCache(self.jwks_uri), [self.issuer], [VAULT_AUDIENCE])
        app = web.Application()
        app.router.add_get("/secrets/{name}", self._secret)
        app.router.add_get("/secrets/{name}/{version}", self._secret)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        return await self._listen(host, port)

    async def stop(self) -> None:
        if self._validator is not None:
            await self._validator.jwks.close()
        await super().stop()

    async def _secret(self, request: web.Request) -> web.Response:
        assert self._validator is not None
        name = request.match_info["name"]
        auth = request.headers.get("Authorization", "")
        entry: dict[str, Any] = {"name": name, "api-version": request.query.get("api-version")}
        self.requests.append(entry)
        if "api-version" not in request.query:
            return _error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        try:
            claims = await self._validator.validate(auth.removeprefix("Bearer ").strip())
        except Rejected as e:
            return _error(401, "Unauthorized", f"AKV10000: Request is missing a Bearer or PoP token. ({e.description})")
        entry["oid"] = claims.get("oid")
        if name not in self.secrets:
            return _error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault.")
        return web.json_response({"value": self.secrets[name], "id": f"{request.url.origin()}/secrets/{name}/1",
                                  "attributes": {"enabled": True}})  # fmt: skip


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class KeyVaultThread(ServerThread[KeyVaultStandIn]):
    def __init__(self, jwks_uri: str, issuer: str, secrets: dict[str, str]) -> None:
        server = KeyVaultStandIn(jwks_uri, issuer, secrets)
        super().__init__(server, "key-vault-stand-in", server.start)

    @property
    def server(self) -> KeyVaultStandIn:
        return self._server


class EchoBackend(LoopbackServer):
    """Answers every request with what it received (method, path, query, headers with values) and records it, with
    the status an ``x-echo-status`` request header asks for."""

    _what = "echo backend"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        return await self._listen(host, port)

    async def _echo(self, request: web.Request) -> web.Response:
        seen = {"method": request.method, "path": request.path, "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()}}  # fmt: skip
        self.requests.append(seen)
        return web.json_response(seen, status=int(request.headers.get("x-echo-status", "200")))


class EchoThread(ServerThread[EchoBackend]):
    def __init__(self) -> None:
        server = EchoBackend()
        super().__init__(server, "echo-backend", server.start)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests
