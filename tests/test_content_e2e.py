"""Transformations and access checks through a real mitmdump, the emulator's managed identity and the validating
backend: outbound json-to-xml + xsl-transform, a Liquid body, find-and-replace on the request, CORS preflight
answered by the gateway and CORS headers on the real response, ip-filter's 403."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from conftest import DEMO_AUDIENCE
from proxy import curl, write_rules

DATA = Path(__file__).resolve().parent / "data"

XML_ROUTE = """<policies><inbound><authentication-managed-identity resource="{aud}" /></inbound>
<backend><forward-request /></backend>
<outbound>
  <json-to-xml apply="content-type-json" consider-accept-header="false" />
  <xsl-transform>
    <parameter parameter-name="via">@(context.Request.Headers.GetValueOrDefault("X-Via", "none"))</parameter>
    <xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
      <xsl:output omit-xml-declaration="yes" />
      <xsl:param name="via" />
      <xsl:template match="/Document">
        <result via="{{$via}}" path="{{path}}"><xsl:value-of select="claims/aud" /></result>
      </xsl:template>
    </xsl:stylesheet>
  </xsl-transform>
</outbound><on-error /></policies>"""

LIQUID_ROUTE = """<policies><inbound>
  <authentication-managed-identity resource="{aud}" />
  <find-and-replace from="password=hunter2" to="password=***" />
</inbound><backend><forward-request /></backend>
<outbound><set-body template="liquid">{{"path": "{{{{ body.path }}}}", "sent": {{{{ body.body_bytes }}}},
  "method": "{{{{ context.Request.Method | Downcase }}}}"}}</set-body></outbound>
<on-error /></policies>"""

CORS_ROUTE = """<policies><inbound>
  <cors allow-credentials="true">
    <allowed-origins><origin>https://app.contoso.test</origin></allowed-origins>
    <allowed-methods preflight-result-max-age="600"><method>GET</method><method>PATCH</method></allowed-methods>
    <allowed-headers><header>Content-Type</header></allowed-headers>
    <expose-headers><header>X-Backend</header></expose-headers>
  </cors>
  <authentication-managed-identity resource="{aud}" />
</inbound><backend><forward-request /></backend><outbound /><on-error /></policies>"""

VALIDATED_ROUTE = """<policies><inbound>
  <validate-parameters specified-parameter-action="prevent" unspecified-parameter-action="prevent" />
  <authentication-managed-identity resource="{aud}" />
</inbound><backend><forward-request /></backend>
<outbound><validate-status-code unspecified-status-code-action="detect" errors-variable-name="status" /></outbound>
<on-error /></policies>"""

MOCKED_ROUTE = """<policies><inbound><mock-response status-code="201" /></inbound><backend /><outbound /><on-error />
</policies>"""

BLOCKED_ROUTE = """<policies><inbound><ip-filter action="forbid"><address-range from="127.0.0.0" to="127.255.255.255" />
</ip-filter></inbound><backend><forward-request /></backend><outbound /><on-error /></policies>"""


def test_transformations_and_access_checks_end_to_end(tmp_path: Path, emu: Any, backend: Any,
                                                      md_factory: Any) -> None:  # fmt: skip
    host = f"127.0.0.1:{backend.port}"
    routes = {"xml": XML_ROUTE, "liquid": LIQUID_ROUTE, "cors": CORS_ROUTE, "blocked": BLOCKED_ROUTE,
              "validated": VALIDATED_ROUTE, "mocked": MOCKED_ROUTE}  # fmt: skip
    for name, text in routes.items():
        (tmp_path / f"{name}.xml").write_text(text.format(aud=DEMO_AUDIENCE) if "{aud}" in text else text)
    shutil.copy(DATA / "openapi" / "orders.yaml", tmp_path / "orders.yaml")
    rules = write_rules(tmp_path, f"""
        rules:
          - {{name: xml, match: {{host: "{host}", path: /xml}}, policy: xml.xml}}
          - {{name: liquid, match: {{host: "{host}", path: /liquid}}, policy: liquid.xml}}
          - {{name: cors, match: {{host: "{host}", path: /cors}}, policy: cors.xml}}
          - {{name: blocked, match: {{host: "{host}", path: /blocked}}, policy: blocked.xml}}
          - name: mocked
            match: {{host: "{host}", path: /v1/orders, methods: [POST]}}
            policy: mocked.xml
            openapi: orders.yaml
          - {{name: validated, match: {{host: "{host}", path: /v1}}, policy: validated.xml, openapi: orders.yaml}}
    """)
    proxy = md_factory(emu, rules)
    base = backend.url

    status, body = curl("-x", proxy.url, "-H", "X-Via: curl", f"{base}/xml/1")
    assert (status, body) == (200, f'<result via="curl" path="/xml/1">{DEMO_AUDIENCE}</result>')

    backend.reset()
    status, body = curl("-x", proxy.url, "-d", "user=ann&password=hunter2", f"{base}/liquid/2")
    assert status == 200 and body == {"path": "/liquid/2", "sent": 21, "method": "post"}, body
    assert backend.stats()["requests"][0]["status"] == 200

    backend.reset()
    status, raw = curl("-x", proxy.url, "-X", "OPTIONS", "-D", "-", "-H", "Origin: https://app.contoso.test",
                       "-H", "Access-Control-Request-Method: PATCH", f"{base}/cors/3")  # fmt: skip
    assert isinstance(raw, str) and raw.startswith("HTTP/1.1 200"), raw
    head = raw.lower()
    for line in ("access-control-allow-origin: https://app.contoso.test", "access-control-allow-credentials: true",
                 "access-control-allow-methods: patch", "access-control-max-age: 600"):  # fmt: skip
        assert line in head, raw
    assert backend.stats()["requests"] == []  # the gateway answered the preflight itself

    status, raw = curl("-x", proxy.url, "-D", "-", "-H", "Origin: https://app.contoso.test", f"{base}/cors/4")
    assert isinstance(raw, str) and raw.startswith("HTTP/1.1 200"), raw
    headers, _, payload = raw.partition("\n\n")
    assert "access-control-allow-origin: https://app.contoso.test" in headers.lower()
    assert "access-control-expose-headers: x-backend" in headers.lower()
    assert json.loads(payload)["claims"]["aud"] == DEMO_AUDIENCE

    status, raw = curl("-x", proxy.url, "-D", "-", "-H", "Origin: https://evil.test", f"{base}/cors/5")
    assert isinstance(raw, str) and raw.startswith("HTTP/1.1 200") and raw.endswith("\n\n"), raw  # empty 200
    assert "access-control" not in raw.lower()

    backend.reset()
    status, body = curl("-x", proxy.url, "-H", "X-Tenant: contoso", f"{base}/v1/orders/abc")
    assert (status, body) == (400, {"statusCode": 400, "message": "Value of the path parameter id couldn't be parsed "
                                    "according to the definition. invalid literal for int() with base 10: 'abc'"})
    status, body = curl("-x", proxy.url, "-H", "X-Tenant: contoso", f"{base}/v1/orders/4?verbose=true")
    assert status == 200 and body["path"] == "/v1/orders/4" and body["claims"]["aud"] == DEMO_AUDIENCE, body
    assert [r["path"] for r in backend.stats()["requests"]] == ["/v1/orders/4"]
    status, body = curl("-x", proxy.url, "-d", "{}", f"{base}/v1/orders")
    assert (status, body) == (201, {"id": 7, "sku": "pen", "qty": 1})

    backend.reset()
    status, body = curl("-x", proxy.url, f"{base}/blocked/6")
    assert (status, body) == (403, {"statusCode": 403, "message": "Forbidden"})
    assert backend.stats()["requests"] == []


CREDENTIALS_RULES = """
certificates:
  orders-client: {{path: "{client}"}}
authorizations:
  github: {{octo: {{access_token: gho_e2e_secret, claims: {{login: octo}}}}}}
rules:
  - name: mtls
    match: {{host: "{host}", path: /mtls}}
    policy: |
      <policies><inbound><authentication-certificate certificate-id="orders-client" /></inbound>
      <backend><forward-request /></backend><outbound /><on-error /></policies>
  - name: entra
    match: {{host: "{host}", path: /aad}}
    policy: |
      <policies><inbound>
        <validate-azure-ad-token tenant-id="{tenant}" authentication-endpoint="{authority}"
            failed-validation-error-message="Unauthorized. Access token is missing or invalid.">
          <audiences><audience>api://orders</audience></audiences>
        </validate-azure-ad-token>
        <get-authorization-context provider-id="github" authorization-id="octo" context-variable-name="gh" />
        <return-response><set-body>@("hello " + ((Authorization)context.Variables["gh"]).Claims["login"])</set-body>
        </return-response>
      </inbound><backend /><outbound /><on-error /></policies>
"""


def test_credentials_end_to_end(tmp_path: Path, emu: Any, md_factory: Any, pki: dict[str, Any],
                                mtls_backend: str) -> None:  # fmt: skip
    """Reverse proxy to a backend that requires a client certificate: authentication-certificate presents it on
    mitmproxy's upstream connection; validate-azure-ad-token against the emulator; get-authorization-context."""
    import asyncio

    from emulator_helpers import raw_token

    host = mtls_backend.removeprefix("https://")
    rules = write_rules(tmp_path, CREDENTIALS_RULES.format(client=pki["dir"] / "client.pem", host=host,
                                                           tenant=emu.tenant_id, authority=emu.url))  # fmt: skip
    proxy = md_factory(emu, rules, "--mode", f"reverse:{mtls_backend}",
                       "--set", f"ssl_verify_upstream_trusted_ca={pki['dir'] / 'ca.pem'}")  # fmt: skip
    proxy.wait_for("connection_strategy set to lazy")

    status, body = curl(f"{proxy.url}/mtls/1")
    assert (status, body) == (200, {"client": "orders-client"}), proxy.text()

    status, body = curl(f"{proxy.url}/aad/1")
    assert (status, body) == (401, {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."})
    token = asyncio.run(raw_token(emu.emulator, "api://orders"))[2]["access_token"]
    status, body = curl("-H", f"Authorization: Bearer {token}", f"{proxy.url}/aad/2")
    assert (status, body) == (200, "hello octo")
    assert "gho_e2e_secret" not in proxy.text()
