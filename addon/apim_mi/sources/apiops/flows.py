"""The gateway between mitmproxy flows and ``routing``: which flows the instance answers, APIM's own answers,
and the routed request's ``context`` (API, operation, product, subscription, matched parameters, backend URL)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ... import flowcontext
from ...errors import ApimMiError, PolicyError
from ...policy.context import Context, Headers
from .keyvault import KeyVaultError, KeyVaultValues
from .routing import Answer, Gateway, GatewayRequest, Routed

if TYPE_CHECKING:
    from mitmproxy import http

    from ...tokens import TokenProvider

log = logging.getLogger("apim_mi")


async def route_flow(gateway: Gateway, flow: http.HTTPFlow, tokens: TokenProvider | None, source: str) -> Routed | None:
    """The route of a flow the instance answers; ``None`` when the flow is not for the instance (forward mode,
    another host) or when the gateway answered it itself (404, 401, or 500 when its Key Vault-backed named values
    cannot be fetched: ``flow.response`` is set)."""
    reverse = getattr(flow.client_conn.proxy_mode, "type_name", "") == "reverse"
    req = flow.request
    if not reverse and not gateway.answers(req.pretty_host):
        return None
    try:
        await start(gateway, tokens, source)
    except ApimMiError as e:
        log.error("apim-mi: %s %s [APIM gateway] failed closed: %s", req.method, flowcontext.pretty_url(req), e)
        _answer(flow, Answer(500, "Internal server error", "KeyVaultFailure"))
        return None
    headers = Headers(req.headers.items(multi=True))
    found = gateway.route(GatewayRequest(req.method, flowcontext.pretty_url(req), headers))
    if isinstance(found, Answer):
        _answer(flow, found)
        return None
    return found


def connect_lazily(options: Any) -> None:
    """An instance answers for hosts such as ``contoso.azure-api.net``: mitmproxy must not connect to them (or look
    them up) when a client opens a CONNECT tunnel, only to wherever the routed request goes."""
    if options.connection_strategy != "lazy":
        options.update(connection_strategy="lazy")
        log.info(
            "apim-mi: connection_strategy=lazy: the APIM instance's gateway hosts are never contacted, requests "
            "go to their backends"
        )


async def start(gateway: Gateway, tokens: TokenProvider | None, source: str) -> None:
    """Fetches the instance's Key Vault-backed named values (once; then kept fresh)."""
    if gateway.key_vault is None:
        gateway.key_vault = KeyVaultValues(gateway.instance)
    if not gateway.key_vault.fetched:
        if tokens is None:
            raise KeyVaultError("Key Vault-backed named values need the proxy's token provider, which did not start")
        await gateway.key_vault.ensure(tokens, source)


def _answer(flow: http.HTTPFlow, answer: Answer) -> None:
    from mitmproxy import http

    flow.response = http.Response.make(
        answer.status, answer.body(), {"Content-Type": "application/json; charset=utf-8"}
    )
    flow.comment = f"apim-mi [APIM gateway]: {answer.reason}, answered {answer.status}"
    log.info(
        "apim-mi: %s %s [APIM gateway] %s: answered %d",
        flow.request.method,
        flowcontext.pretty_url(flow.request),
        answer.reason,
        answer.status,
    )


def apply_route(routed: Routed, context: Context) -> None:
    """The routed request as the policy sees it: ``context.Request.Url`` is the backend URL (serviceUrl + the
    operation's path), ``OriginalUrl`` what the client sent."""
    context.api = routed.context_api()
    context.operation = routed.context_operation()
    context.product = routed.context_product()
    context.subscription = routed.context_subscription()
    context.request.matched_parameters = dict(routed.matched)
    if routed.service_id:
        context.deployment.service_id = routed.service_id
        context.deployment.service_name = routed.service_id.rsplit("/", 1)[-1]
    if routed.backend_url is not None:
        context.request.url = routed.backend_url.copy()
        if "Host" in context.request.headers:
            context.request.headers.set("Host", [routed.backend_url.authority])


def unrouted(routed: Routed, context: Context) -> PolicyError | None:
    """An API without a serviceUrl whose policy set no backend has nowhere to go: an error, never the gateway's
    own host (which would be the real instance in Azure)."""
    if routed.backend_url is None and context.request.url.host == context.request.original_url.host:  # type: ignore[union-attr]
        return PolicyError(
            "configuration",
            f"API '{routed.api.name}' has no serviceUrl and its policy sets no "
            "backend (set-backend-service), so the request has no backend to go to.",
            "BackendNotSet",
        )
    return None


def configuration_data(flow: http.HTTPFlow, routed: Routed) -> dict[str, Any]:
    """The trace's ``api-inspector`` configuration entry with the real API, operation and product."""
    backend = routed.backend_url
    return {"configuration": {
        "api": {
            "from": "/" + routed.api.path,
            "to": None if backend is None else {"scheme": backend.scheme, "host": backend.host, "port": backend.port,
                                                "path": backend.path, "queryString": backend.query_string,
                                                "query": {}, "isDefaultPort": backend.authority == backend.host},
            "version": routed.api.version or None,
            "revision": routed.api.revision,
        },
        "operation": {"method": routed.operation.method if routed.operation else flow.request.method,
                      "uriTemplate": routed.operation.url_template if routed.operation else "/*"},
        "user": "-",
        "product": routed.product.name if routed.product else "-",
        "apim-mi": {"rule": routed.rule.name, "definedAt": str(routed.rule.location)},
    }}  # fmt: skip
