"""An APIOps extraction as the rules (tests/data/apiops/contoso, written for these tests): loading, routing with APIM's
precedence and version sets, scope composition, named values, subscriptions; end to end through one real mitmdump
in forward mode (the client calls https://contoso.azure-api.net through the proxy) with the validating backend."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from apim_mi.errors import LoadError
from apim_mi.policy.context import Headers
from apim_mi.policy.loader import effective_policy_xml
from apim_mi.sources.apiops import Answer, Gateway, GatewayRequest, Routed, load_instance
from apim_mi.sources.apiops.overrides import Overrides
from apiops_servers import EchoThread, KeyVaultThread
from conftest import DEMO_AUDIENCE
from proxy import curl, proxy_for, run_mitmdump_expecting_exit, start_mitmdump, write_rules

CONTOSO = Path(__file__).resolve().parent / "data" / "apiops" / "contoso"
GOLD, MASTER = "gold-key-0000", "master-key-0000"


@pytest.fixture(scope="module")
def gateway() -> Gateway:
    overrides = Overrides(
        named_values={"orders-secret": "s3cr3t"},
        subscriptions={"gold-sub": {"keys": [GOLD]}, "master": {"keys": [MASTER]}},
    )
    return Gateway(load_instance(CONTOSO, overrides, env={}))


def route(gw: Gateway, method: str, url: str, **headers: str) -> Routed | Answer:
    return gw.route(GatewayRequest(method, url, Headers(list(headers.items()))))


def routed(gw: Gateway, method: str, url: str, **headers: str) -> Routed:
    found = route(gw, method, url, **headers)
    assert isinstance(found, Routed), found
    return found


def test_operation_precedence_literal_before_parameter_then_method(gateway: Gateway) -> None:
    base = "https://contoso.azure-api.net/orders"
    mine = routed(gateway, "GET", f"{base}/mine", **{"x-orders-key": GOLD})
    assert (mine.operation.name, mine.matched) == ("my-orders", {})  # type: ignore[union-attr]
    one = routed(gateway, "GET", f"{base}/42", **{"x-orders-key": GOLD})
    assert (one.operation.name, one.matched) == ("get-order", {"id": "42"})  # type: ignore[union-attr]
    assert str(one.backend_url) == "https://orders-backend.contoso.example/api/42"
    item = routed(gateway, "GET", f"{base}/42/items/a%20b", **{"x-orders-key": GOLD})
    assert item.matched == {"id": "42", "item": "a b"}
    create = routed(gateway, "POST", base, **{"x-orders-key": GOLD})
    assert create.operation.name == "create-order"  # type: ignore[union-attr]
    assert route(gateway, "DELETE", f"{base}/42", **{"x-orders-key": GOLD}) == Answer(
        404, "Resource not found", "OperationNotFound"
    )
    assert isinstance(route(gateway, "GET", "https://contoso.azure-api.net/nothing/here"), Answer)


@pytest.mark.parametrize(("url", "headers", "api"), [
    ("https://g.azure-api.net/inventory/stock/1", {"Api-Version": "v2"}, "inventory-v2"),
    ("https://g.azure-api.net/inventory/stock/1", {"api-version": "v1"}, "inventory-v1"),
    ("https://g.azure-api.net/inventory/stock/1", {}, None),  # a header-versioned set without an original
    ("https://g.azure-api.net/billing/stock/1?api-version=2025-01-01", {}, "billing-2025"),
    ("https://g.azure-api.net/billing/stock/1?api-version=2024-01-01", {}, "billing-2024"),
    ("https://g.azure-api.net/billing/stock/1?api-version=1999", {}, None),
    ("https://g.azure-api.net/catalog/v2/stock/1", {}, "catalog-v2"),
    ("https://g.azure-api.net/catalog/stock/1", {}, "catalog"),
])  # fmt: skip
def test_version_sets_segment_query_header(gateway: Gateway, url: str, headers: dict[str, str], api: str) -> None:
    found = route(gateway, "GET", url, **headers)
    if api is None:
        assert isinstance(found, Answer) and found.status == 404
    else:
        assert isinstance(found, Routed) and found.api.name == api
        assert found.matched == {"sku": "1"}
        assert found.backend_url is not None and found.backend_url.path == "/stock/1"


def test_a_revision_that_is_not_current_is_reached_with_rev(gateway: Gateway) -> None:
    current = routed(gateway, "GET", "https://contoso.azure-api.net/orders/42", **{"x-orders-key": GOLD})
    assert current.api.name == "orders"
    next_rev = routed(gateway, "GET", "https://contoso.azure-api.net/orders;rev=2/42", **{"x-orders-key": GOLD})
    assert (next_rev.api.name, next_rev.api.revision, next_rev.matched) == ("orders;rev=2", "2", {"id": "42"})
    assert str(next_rev.backend_url) == "https://orders-backend-next.contoso.example/api/42"
    assert next_rev.product.name == "gold"  # type: ignore[union-attr]  # the product links the API, every revision
    assert isinstance(route(gateway, "GET", "https://contoso.azure-api.net/orders;rev=7/42"), Answer)


def test_api_without_openapi_routes_by_path(gateway: Gateway) -> None:
    found = routed(gateway, "POST", "https://contoso.azure-api.net/soap/temp/anything?wsdl")
    assert found.api.name == "tempconvert" and found.operation is None and found.matched == {}
    assert str(found.backend_url) == "https://tempconvert.contoso.example/service.asmx/anything?wsdl"
    assert found.rule.name == "tempconvert"


def test_subscriptions_keys_scopes_and_apim_401_bodies(gateway: Gateway) -> None:
    url = "https://contoso.azure-api.net/orders/42"
    missing = route(gateway, "GET", url)
    assert isinstance(missing, Answer) and missing.status == 401
    assert json.loads(missing.body()) == {"statusCode": 401, "message": (
        "Access denied due to missing subscription key. Make sure to include subscription key when making requests "
        "to an API.")}  # fmt: skip
    invalid = route(gateway, "GET", url, **{"x-orders-key": "nope"})
    assert isinstance(invalid, Answer) and invalid.reason == "SubscriptionKeyInvalid"
    assert route(gateway, "GET", url, **{"Ocp-Apim-Subscription-Key": GOLD}) == missing  # the API renamed it
    gold = routed(gateway, "GET", url, **{"x-orders-key": GOLD})
    assert (gold.product.name, gold.subscription.name) == ("gold", "gold-sub")  # type: ignore[union-attr]
    master = routed(gateway, "GET", f"{url}?key={MASTER}")  # the API's query parameter name
    assert master.product is None and master.subscription.name == "master"  # type: ignore[union-attr]
    assert routed(gateway, "GET", "https://g.azure-api.net/catalog/stock/1").subscription is None  # open API
    # an open API with a key: a key valid for it identifies the subscription, one that is not is ignored
    assert (
        routed(
            gateway, "GET", "https://g.azure-api.net/catalog/stock/1", **{"Ocp-Apim-Subscription-Key": MASTER}
        ).subscription.name
        == "master"
    )  # type: ignore[union-attr]
    assert (
        routed(
            gateway, "GET", "https://g.azure-api.net/catalog/stock/1", **{"Ocp-Apim-Subscription-Key": GOLD}
        ).subscription
        is None
    )  # gold's product has no catalog API


def test_scopes_compose_global_product_api_operation_with_fragments(gateway: Gateway) -> None:
    gold = routed(gateway, "GET", "https://contoso.azure-api.net/orders/42", **{"x-orders-key": GOLD})
    xml = effective_policy_xml(gold.rule.policy)
    markers = [line.strip() for line in xml.splitlines() if "base:" in line]
    assert markers[:6] == [
        "<!-- base: Begin Api scope -->", "<!-- base: Begin Product scope -->", "<!-- base: Begin Global scope -->",
        "<!-- base: End Global scope -->", "<!-- base: End Product scope -->", "<!-- base: End Api scope -->",
    ]  # fmt: skip
    outbound = [s for s in gold.rule.policy.sections["outbound"] if s.name == "set-header"]
    trail = [s.children[0].text.text for s in outbound if s.attrs["name"].text == "x-trail"]  # type: ignore[union-attr]
    assert trail == ["global", "product", "api", "operation"]
    no_product = routed(gateway, "GET", f"https://contoso.azure-api.net/orders/42?key={MASTER}")
    assert "product" not in [
        s.children[0].text.text
        for s in no_product.rule.policy.sections["outbound"]  # type: ignore[union-attr]
        if s.attrs["name"].text == "x-trail"
    ]
    assert "s3cr3t" in effective_policy_xml(gold.rule.policy)  # the secret named value from the overrides


def test_workspace_scope_sits_between_global_and_api(gateway: Gateway) -> None:
    found = routed(gateway, "GET", "https://contoso.azure-api.net/team/stock/sku-1")
    assert (found.api.name, found.api.workspace, found.matched) == ("team-stock", "team-a", {"sku": "sku-1"})
    trail = [s.children[0].text.text for s in found.rule.policy.sections["outbound"]  # type: ignore[union-attr]
             if s.attrs["name"].text == "x-trail"]  # fmt: skip
    assert trail == ["global", "workspace", "api"]
    names = [s.attrs["name"].text for s in found.rule.policy.sections["outbound"] if s.name == "set-header"]
    assert "x-workspace-fragment" in names  # the workspace's own fragment
    assert "<!-- base: Begin Workspace scope -->" in effective_policy_xml(found.rule.policy)


def test_validate_reports_the_instance_named_by_a_rules_file(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        f"""
        apim:
          extraction: {CONTOSO}
          named_values: {{orders-secret: x}}
          subscriptions: {{gold-sub: k}}
    """,
    )
    out = subprocess.run([sys.executable, "-m", "apim_mi.cli", "validate", str(rules), "--effective"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(CONTOSO.parents[3] / "addon")})  # fmt: skip
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert (
        "APIOps extraction: 11 API(s)" in out.stdout
        and 'orders "Orders": /orders -> https://orders-backend' in out.stdout
    )
    assert "GET     /{id}  [get-order] (policy)" in out.stdout and "<!-- base: Begin Product scope -->" in out.stdout
    assert "vault-secret: https://contoso-kv.vault.azure.net/secrets/orders-key" in out.stdout
    assert "subscriptions without a local key (give them under subscriptions: in the overrides): master" in out.stdout


def test_broken_documents_are_located_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(CONTOSO, bad)
    (bad / "apimartifacts/apis/orders/apiInformation.json").write_text('{"properties": {"path": "orders",}}')
    with pytest.raises(LoadError) as err:
        load_instance(bad, Overrides(named_values={"orders-secret": "x"}), env={})
    assert str(err.value).endswith(
        "apis/orders/apiInformation.json:1:33: invalid JSON: Illegal trailing comma before end of object"
    )
    shutil.copytree(CONTOSO, bad, dirs_exist_ok=True)
    (bad / "apimartifacts/apis/orders/operations/get-order/policy.xml").write_text("<policies><inbound><base/>")
    inst = load_instance(bad, Overrides(named_values={"orders-secret": "x"}), env={}, collect=True)
    assert [str(e).split("apimartifacts/")[1].split(":")[0] for e in inst.errors] == [
        "apis/orders/operations/get-order/policy.xml"
    ]


def test_missing_secret_named_value_is_a_startup_error_naming_it() -> None:
    with pytest.raises(LoadError) as err:
        load_instance(CONTOSO, Overrides(), env={})
    assert "named value 'orders-secret'" in str(err.value) and "APIM_NAMED_VALUE_ORDERS_SECRET" in str(err.value)
    assert "apis/orders/policy.xml:6:" in str(err.value)  # where it is used
    assert (
        load_instance(CONTOSO, Overrides(), env={"APIM_NAMED_VALUE_ORDERS_SECRET": "x"}).named["orders-secret"].origin
        == "environment"
    )


# -- end to end ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_backend() -> Any:
    with EchoThread() as server:
        yield server


@pytest.fixture(scope="module")
def vault(emulator: Any) -> Any:
    with KeyVaultThread(emulator.jwks_uri, emulator.issuer, {"orders-key": "kv-value"}) as kv:
        yield kv


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, emulator: Any, backend: Any, vault: Any, echo_backend: Any) -> Any:
    tmp = tmp_path_factory.mktemp("apiops")
    rules = write_rules(
        tmp,
        f"""
        apim:
          extraction: {CONTOSO}
          key_vault: {{url: "{vault.url}", refresh: 1}}
          named_values: {{orders-secret: s3cr3t}}
          apis:
            orders: {{serviceUrl: "{backend.url}/api"}}
            inventory-v1: {{serviceUrl: "{echo_backend.url}/inventory-v1"}}
            inventory-v2: {{serviceUrl: "{echo_backend.url}/inventory-v2"}}
            billing-2025: {{serviceUrl: "{echo_backend.url}/billing-2025"}}
            catalog-v2: {{serviceUrl: "{echo_backend.url}/catalog-v2"}}
            catalog: {{serviceUrl: "{echo_backend.url}/catalog"}}
          backends:
            items-backend: {{url: "{backend.url}/items"}}
            orders-a: {{url: "{echo_backend.url}/pool-a"}}
            orders-b: {{url: "{echo_backend.url}/pool-b"}}
          overrides: local.yaml
        rules:  # matched before the instance
          - name: local stub
            match: {{host: contoso.azure-api.net, path: /orders/stub}}
            policy: <policies><inbound><return-response><set-status code="299" /></return-response></inbound></policies>
    """,
    )
    (tmp / "local.yaml").write_text(f"""
gateway_hosts: [api.contoso.test]
subscriptions:
  gold-sub: {GOLD}
  master: {MASTER}
""")
    with socket.socket() as probe:  # a free port for the second (reverse) listener
        probe.bind(("127.0.0.1", 0))
        reverse_port = probe.getsockname()[1]
    md = proxy_for(tmp, emulator, rules, "--mode", "regular", "--mode", f"reverse:http://127.0.0.1:9@{reverse_port}")
    md.reverse_port = reverse_port
    yield md
    md.stop()


def test_forward_mode_acts_as_the_gateway(proxy: Any, backend: Any) -> None:
    backend.reset()
    status, body = curl(
        "-x", proxy.url, "-D", "-", "-H", f"x-orders-key: {GOLD}", "http://contoso.azure-api.net/orders/42?x=1"
    )
    assert isinstance(body, str), body
    head, _, payload = body.partition("\n\n")
    assert status == 200, proxy.text()
    echoed = json.loads(payload)
    assert echoed["path"] == "/api/42" and echoed["query"] == "x=1"
    assert echoed["claims"]["aud"] == DEMO_AUDIENCE  # the API policy's managed identity, validated by the backend
    headers = head.lower()
    assert "x-trail: global" in headers and headers.index("x-trail: global") < headers.index(
        "x-trail: product"
    ) < headers.index("x-trail: api") < headers.index("x-trail: operation")
    assert "x-route: orders get-order /{id} id=42 product=gold sub=gold subscription service=contoso" in headers
    request = backend.stats()["requests"][-1]
    assert "x-gateway" in [h.lower() for h in request["headers"]] and "x-secret-seen" in [
        h.lower() for h in request["headers"]
    ]


def test_forward_mode_backend_from_set_backend_service_and_apim_answers(proxy: Any, backend: Any) -> None:
    status, body = curl("-x", proxy.url, "-D", "-", f"http://contoso.azure-api.net/orders/42/items/7?key={MASTER}")
    assert status == 200 and isinstance(body, str), body
    assert json.loads(body.partition("\n\n")[2])["path"] == "/items/42/items/7"
    assert "x-route: get-item 42/7" in body.lower()
    status, answer = curl("-x", proxy.url, "http://contoso.azure-api.net/orders/42")
    assert status == 401 and answer["message"].startswith("Access denied due to missing subscription key")  # type: ignore[index]
    status, answer = curl("-x", proxy.url, "-H", "x-orders-key: wrong", "http://contoso.azure-api.net/orders/42")
    assert status == 401 and "invalid subscription key" in answer["message"]  # type: ignore[index]
    status, answer = curl("-x", proxy.url, "http://contoso.azure-api.net/no-such-api")
    assert (status, answer) == (404, {"statusCode": 404, "message": "Resource not found"})
    # an API without serviceUrl whose policy sets no backend has nowhere to go: never the gateway host itself
    status, answer = curl("-x", proxy.url, "http://contoso.azure-api.net/legacy/ping")
    assert status == 500 and answer["message"] == "Internal server error"  # type: ignore[index]
    proxy.wait_for(r"API 'legacy' has no serviceUrl and its policy sets no backend")
    # another host is not the gateway: it passes through untouched (here: straight to the backend, no token)
    status, answer = curl("-x", proxy.url, f"{backend.url}/orders/42")
    assert status == 401


def test_key_vault_named_value_fetched_with_the_proxys_identity_and_refreshed(
    proxy: Any, vault: Any, emulator: Any
) -> None:
    url = f"http://contoso.azure-api.net/orders/1/items/2?key={MASTER}"
    status, body = curl("-x", proxy.url, "-D", "-", url)
    assert status == 200 and "x-vault-secret-length: 8" in str(body).lower(), body  # len("kv-value")
    fetched = [r for r in vault.server.requests if "oid" in r]
    assert fetched and fetched[0] == {"name": "orders-key", "api-version": "7.4", "oid": fetched[0]["oid"]}
    assert fetched[0]["oid"]  # a token the stand-in validated against the emulator's keys
    vault.server.secrets["orders-key"] = "rotated-value"  # rotated in the vault: the next refresh picks it up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = curl("-x", proxy.url, "-D", "-", url)
        if "x-vault-secret-length: 13" in str(body).lower():
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the rotated secret never arrived: {body}\n{proxy.text()}")
    assert "rotated-value" not in proxy.text() and "kv-value" not in proxy.text()  # secret values are never logged


def test_key_vault_failure_is_a_clear_startup_error_and_fails_closed(
    tmp_path: Path, emulator: Any, md_factory: Any, vault: Any
) -> None:
    rules = write_rules(
        tmp_path,
        f"""
        apim:
          extraction: {CONTOSO}
          key_vault: {{url: "{vault.url}/missing-vault"}}
          named_values: {{orders-secret: s3cr3t}}
          subscriptions: {{master: {MASTER}}}
    """,
    )
    md = md_factory(emulator, rules)
    md.wait_for(r"apim-mi: could not start: named value 'vault-secret': .* answered 404")
    status, body = curl("-x", md.url, f"http://contoso.azure-api.net/orders/1/items/2?key={MASTER}")
    assert status == 500 and body["message"] == "Internal server error"  # type: ignore[index]


def test_https_through_connect_acts_as_the_gateway(proxy: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The client keeps calling https://contoso.azure-api.net (trusting mitmproxy's CA); nothing goes to Azure."""
    ca = next(Path(tmp_path_factory.getbasetemp()).glob("apiops*/confdir/mitmproxy-ca-cert.pem"))
    status, body = curl(
        "-x", proxy.url, "--cacert", str(ca), "-H", f"x-orders-key: {GOLD}", "https://contoso.azure-api.net/orders/mine"
    )
    assert status == 200 and body["path"] == "/api/mine", (body, proxy.text())  # type: ignore[index]


def test_reverse_mode_answers_every_request(proxy: Any) -> None:
    port = proxy.reverse_port
    status, body = curl("-H", f"x-orders-key: {GOLD}", f"http://127.0.0.1:{port}/orders/42")
    assert status == 200 and body["path"] == "/api/42", (body, proxy.text())  # type: ignore[index]
    status, body = curl(f"http://127.0.0.1:{port}/elsewhere")
    assert (status, body) == (404, {"statusCode": 404, "message": "Resource not found"})


def test_hot_reload_picks_up_a_new_api_and_keeps_the_last_good_instance(
    tmp_path: Path, emulator: Any, echo_backend: Any, md_factory: Any
) -> None:
    extraction = tmp_path / "contoso"
    shutil.copytree(CONTOSO, extraction)
    rules = write_rules(
        tmp_path,
        f"""
        apim:
          extraction: {extraction}
          named_values: {{orders-secret: s3cr3t, vault-secret: local}}
    """,
    )
    md = md_factory(emulator, rules)
    status, _ = curl("-x", md.url, "http://contoso.azure-api.net/fresh/hello")
    assert status == 404
    fresh = extraction / "apimartifacts" / "apis" / "fresh"
    fresh.mkdir()
    (fresh / "specification.yaml").write_text(
        "openapi: 3.0.1\ninfo: {title: f, version: '1'}\npaths:\n  /hello:\n    get: {operationId: hello}\n"
    )
    (fresh / "apiInformation.json").write_text(
        json.dumps(
            {"properties": {"path": "fresh", "serviceUrl": f"{echo_backend.url}/fresh", "subscriptionRequired": False}}
        )
    )
    md.wait_for(r"rules reloaded", timeout=10)
    status, seen = curl("-x", md.url, "http://contoso.azure-api.net/fresh/hello")
    assert status == 200 and seen["path"] == "/fresh/hello", (seen, md.text())  # type: ignore[index]
    (fresh / "apiInformation.json").write_text("{broken")
    md.wait_for(r"keeping the previous rules", timeout=10)
    status, _ = curl("-x", md.url, "http://contoso.azure-api.net/fresh/hello")
    assert status == 200


def test_trace_shows_the_real_api_operation_and_product(proxy: Any) -> None:
    status, body = curl("-x", proxy.url, "-D", "-", "-H", f"x-orders-key: {GOLD}", "-H", "Ocp-Apim-Trace: true",
                        "http://contoso.azure-api.net/orders/42")  # fmt: skip
    assert status == 200 and isinstance(body, str), body
    location = next(line.split(": ", 1)[1] for line in body.splitlines()
                    if line.lower().startswith("ocp-apim-trace-location:"))  # fmt: skip
    status, trace = curl("-x", proxy.url, location.strip())
    assert status == 200, trace
    entries = trace["traceEntries"]["inbound"]  # type: ignore[index]
    configuration = next(e["data"]["configuration"] for e in entries if "configuration" in e["data"])
    assert configuration["api"]["from"] == "/orders" and configuration["api"]["to"]["path"] == "/api/42"
    assert configuration["operation"] == {"method": "GET", "uriTemplate": "/{id}"}
    assert configuration["product"] == "gold"


@pytest.mark.parametrize(("path", "headers", "backend_path"), [
    ("/inventory/stock/7", ["Api-Version: v2"], "/inventory-v2/stock/7"),
    ("/inventory/stock/7", ["Api-Version: v1"], "/inventory-v1/stock/7"),
    ("/billing/stock/7?api-version=2025-01-01", [], "/billing-2025/stock/7"),
    ("/catalog/v2/stock/7", [], "/catalog-v2/stock/7"),
])  # fmt: skip
def test_version_sets_through_the_proxy(proxy: Any, echo_backend: Any, path: str, headers: list[str],
                                        backend_path: str) -> None:  # fmt: skip
    args = [a for h in headers for a in ("-H", h)]
    status, seen = curl("-x", proxy.url, *args, f"http://contoso.azure-api.net{path}")
    assert status == 200 and seen["path"] == backend_path, (seen, proxy.text())  # type: ignore[index]


def test_mi_rules_names_the_extraction_folder_itself(tmp_path: Path, emulator: Any) -> None:
    """Without overrides a used secret must come from the environment; missing, mitmdump does not start and says
    which named value, where it is used and how to give it."""
    code, out = run_mitmdump_expecting_exit(["--set", f"mi_rules={CONTOSO}"], confdir=tmp_path / "c1")
    assert code != 0 and "named value 'orders-secret'" in out and "APIM_NAMED_VALUE_ORDERS_SECRET" in out, out
    assert "apis/orders/policy.xml:6:" in out and "Traceback" not in out
    env = {**emulator.env("imds"), "APIM_NAMED_VALUE_ORDERS_SECRET": "from-env", "APIM_NAMED_VALUE_VAULT_SECRET": "v"}
    md = start_mitmdump(["--set", f"mi_rules={CONTOSO}", "--set", "mi_credential=managed-identity"], env=env,
                        confdir=tmp_path / "c2")  # fmt: skip
    try:
        md.wait_for(r"apim-mi: APIM instance from .*contoso/apimartifacts: 11 API\(s\)")
        status, _ = curl("-x", md.url, "http://contoso.azure-api.net/orders/1")
        assert status == 401  # no subscription keys without overrides
        status, _ = curl("-x", md.url, "http://contoso.azure-api.net/legacy/ping")
        assert status == 500  # routed, and never to the gateway
        md.wait_for(r"API 'legacy' has no serviceUrl")
    finally:
        md.stop()


def test_backend_pool_and_credentials_from_backend_information(proxy: Any, echo_backend: Any) -> None:
    """backendInformation.json's pool (priority 1 first), its members' credentials; a member's circuit breaker
    trips on a 5xx and the next request goes to the priority-2 member."""
    url = f"http://contoso.azure-api.net/orders?key={MASTER}"
    status, seen = curl("-x", proxy.url, "-X", "POST", url)
    assert status == 200 and seen["path"] == "/pool-a/" and seen["headers"]["x-member"] == "a", seen  # type: ignore[index]
    status, _ = curl("-x", proxy.url, "-X", "POST", "-H", "x-echo-status: 503", url)
    assert status == 503
    status, seen = curl("-x", proxy.url, "-X", "POST", url)
    assert status == 200 and seen["path"] == "/pool-b/" and seen["headers"]["x-member"] == "b", (seen, proxy.text())  # type: ignore[index]


def test_rules_first_then_the_instance_for_its_gateway_hosts(proxy: Any, echo_backend: Any) -> None:
    status, _ = curl("-x", proxy.url, "http://contoso.azure-api.net/orders/stub")
    assert status == 299  # the rules file's own rule, before the instance (which would ask for a key)
    status, seen = curl("-x", proxy.url, "http://api.contoso.test/catalog/v2/stock/3")  # gateway_hosts (overrides file)
    assert status == 200 and seen["path"] == "/catalog-v2/stock/3"  # type: ignore[index]


@pytest.mark.parametrize(("key", "subscription"), [
    ("", "none"), ("not-a-key", "none"), (MASTER, "Built-in all-access subscription"), (GOLD, "none"),
])  # fmt: skip
def test_open_api_subscription_is_the_gateways(proxy: Any, key: str, subscription: str) -> None:
    """An open API: context.Subscription is the key's subscription when the key is valid for it, else null."""
    headers = ["-H", f"Ocp-Apim-Subscription-Key: {key}"] if key else []
    status, body = curl("-x", proxy.url, "-D", "-", *headers, "http://contoso.azure-api.net/catalog/stock/1")
    seen = [line.split(":", 1)[1].strip() for line in str(body).splitlines()
            if line.lower().startswith("x-subscription:")]  # fmt: skip
    assert status == 200 and seen == [subscription], body
