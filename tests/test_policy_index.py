"""The policy reference index against the catalog: every policy element APIM documents is known, runs or fails
loudly with its reason; redirect-content-urls and set-backend-service's Dapr form through the engine."""

from __future__ import annotations

from apim_mi.policy import engine
from apim_mi.policy.catalog import CATALOG
from apim_mi.policy.context import Api, Body, Headers, Response, Url
from apim_mi.policy.statements import HANDLERS
from test_statements import body_json, make_run, policies

#: Every policy element of APIM's policy reference index (api-management-policies.md, learn.microsoft.com), by family.
REFERENCE_INDEX = {
    "rate limiting and quotas": ("rate-limit", "rate-limit-by-key", "quota", "quota-by-key", "limit-concurrency",
                                 "azure-openai-token-limit", "llm-token-limit"),
    "authentication and authorization": ("check-header", "get-authorization-context", "ip-filter",
                                         "validate-azure-ad-token", "validate-jwt", "validate-client-certificate",
                                         "authentication-basic", "authentication-certificate",
                                         "authentication-managed-identity"),
    "content validation": ("llm-content-safety", "validate-content", "validate-graphql-request",
                           "validate-odata-request", "validate-parameters", "validate-headers", "validate-status-code"),
    "routing": ("forward-request", "set-backend-service", "proxy"),
    "caching": ("cache-lookup", "cache-store", "cache-lookup-value", "cache-store-value", "cache-remove-value",
                "azure-openai-semantic-cache-lookup", "azure-openai-semantic-cache-store",
                "llm-semantic-cache-lookup", "llm-semantic-cache-store"),
    "transformation": ("set-method", "set-status", "set-variable", "set-body", "set-header", "set-query-parameter",
                       "rewrite-uri", "json-to-xml", "xml-to-json", "find-and-replace", "redirect-content-urls",
                       "xsl-transform", "return-response", "mock-response"),
    "cross-domain": ("cross-domain", "cors", "jsonp"),
    "integration and external communication": ("send-request", "send-one-way-request", "log-to-eventhub",
                                               "publish-to-dapr", "invoke-dapr-binding"),
    "logging": ("trace", "emit-metric", "azure-openai-emit-token-metric", "llm-emit-token-metric"),
    "graphql resolvers": ("sql-data-source", "cosmosdb-data-source", "http-data-source", "publish-event"),
    "policy control and flow": ("choose", "include-fragment", "retry", "wait"),
}  # fmt: skip
EXPANDED_AT_LOAD = {"include-fragment"}


def test_every_documented_policy_runs_or_fails_loudly_with_its_reason() -> None:
    for family, names in REFERENCE_INDEX.items():
        for name in names:
            spec = CATALOG.get(name)
            assert spec is not None, f"{family}: {name} is not in the catalog"
            assert name in HANDLERS or name in EXPANDED_AT_LOAD or (not spec.supported and spec.limits), name


async def test_redirect_content_urls_masks_backend_links_both_ways() -> None:
    xml = policies(inbound="<redirect-content-urls />", outbound="<redirect-content-urls />")
    run = make_run(xml, url="https://gateway.test/orders/42")
    run.context.api = Api(id="orders", name="Orders", path="orders", service_url=Url.parse("https://backend.test/api"))
    run.context.request.body = Body(b'{"self": "https://GATEWAY.test/orders/42"}')
    await engine.run_inbound(run)
    assert run.context.request.body.content == b'{"self": "https://backend.test/api/42"}'
    run.context.response = Response(200, "OK", Headers([("Content-Type", "application/json")]),
                                    Body(b'{"next": "https://backend.test/api/43", "other": "https://else.test/1"}'))
    await engine.run_outbound(run)
    assert body_json(run.context.response) == {"next": "https://gateway.test/orders/43", "other": "https://else.test/1"}


async def test_the_dapr_form_of_set_backend_service_fails_loudly() -> None:
    run = make_run(policies('<set-backend-service backend-id="dapr" dapr-app-id="orders" dapr-method="get" />'))
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    assert run.context.last_error.reason == "PolicyNotSupported"
    assert "there is no Dapr runtime on the proxy's machine" in run.context.last_error.message
