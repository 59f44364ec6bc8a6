"""Caching, limits, retry with a backend pool, side effects and the cross-domain policies through one real mitmdump,
the emulator's managed identity and the validating backend, driven by curl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import DEMO_AUDIENCE
from proxy import curl, write_rules

MI = f'<authentication-managed-identity resource="{DEMO_AUDIENCE}" />'
ROUTES = {
    "cached": f"""<policies><inbound>{MI}<cache-lookup vary-by-developer="false" vary-by-developer-groups="false">
        <vary-by-query-parameter>v</vary-by-query-parameter></cache-lookup></inbound>
      <backend><forward-request /></backend><outbound><cache-store duration="60" /></outbound></policies>""",
    "limited": f"""<policies><inbound>{MI}<rate-limit-by-key calls="2" renewal-period="60"
        counter-key="@(context.Request.IpAddress)" remaining-calls-header-name="X-Remaining" /></inbound>
      <backend><forward-request /></backend><outbound /></policies>""",
    "store": """<policies><inbound><cache-store-value key="greeting" duration="60"
        value="@(context.Request.Headers.GetValueOrDefault(&quot;X-Greeting&quot;, &quot;none&quot;))" />
        <emit-metric name="stored" namespace="e2e"><dimension name="route" value="store" /></emit-metric>
        <log-to-eventhub logger-id="audit">@("stored " + context.Request.Url.Path)</log-to-eventhub>
        <return-response><set-status code="204" reason="No Content" /></return-response></inbound></policies>""",
    "read": """<policies><inbound><cache-lookup-value key="greeting" variable-name="g" default-value="unset" />
        <return-response><set-status code="200" reason="OK" />
          <set-body>@((string)context.Variables["g"])</set-body></return-response></inbound></policies>""",
    "jsonp": f"""<policies><inbound>{MI}<cross-domain><cross-domain-policy><allow-access-from domain="*" />
        </cross-domain-policy></cross-domain></inbound><backend><forward-request /></backend>
      <outbound><jsonp callback-parameter-name="cb" /></outbound></policies>""",
    "pool": f"""<policies><inbound>{MI}<set-backend-service backend-id="pool" /></inbound>
      <backend><retry count="1" interval="0" first-fast-retry="true"
          condition="@(context.Response.StatusCode == 401)"><forward-request /></retry></backend>
      <outbound /></policies>""",
}


def test_runtime_families_end_to_end(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    host = f"127.0.0.1:{backend.port}"
    for name, text in ROUTES.items():
        (tmp_path / f"{name}.xml").write_text(text)
    rules = write_rules(tmp_path, f"""
        backends:
          bad-credentials:   # the backend refuses this token: 401, which trips the breaker
            url: {backend.url}
            credentials: {{header: {{Authorization: ["Bearer not-a-token"]}}}}
            circuitBreaker: {{rules: [{{name: r, failureCondition: {{count: 1, interval: PT1M,
                              statusCodeRanges: [{{min: 401, max: 401}}]}}, tripDuration: PT1M}}]}}
          good: {backend.url}
          pool: {{type: Pool, pool: {{services: [{{id: /backends/bad-credentials, priority: 1}},
                                              {{id: /backends/good, priority: 2}}]}}}}
        loggers: {{audit: events.jsonl}}
        rules:
""" + "".join(f'          - {{name: {n}, match: {{host: "{host}", path: /{n}}}, policy: {n}.xml}}\n' for n in ROUTES))
    proxy = md_factory(emu, rules)
    base = backend.url

    backend.reset()
    for _ in range(2):
        status, body = curl("-x", proxy.url, f"{base}/cached/1?v=1")
        assert status == 200 and body["claims"]["aud"] == DEMO_AUDIENCE
    assert len(backend.stats()["requests"]) == 1  # the second GET came from the response cache

    codes = []
    for _ in range(3):
        status, raw = curl("-x", proxy.url, "-D", "-", f"{base}/limited/x")
        codes.append(status)
    assert codes == [200, 200, 429]
    assert isinstance(raw, str)
    head, _, payload = raw.replace("\r\n", "\n").partition("\n\n")
    wait = int(next(line.split(":", 1)[1] for line in head.splitlines() if line.lower().startswith("retry-after:")))
    assert 0 < wait <= 60
    message = f"Rate limit is exceeded. Try again in {wait} seconds."
    assert json.loads(payload) == {"statusCode": 429, "message": message}

    assert curl("-x", proxy.url, f"{base}/read/1") == (200, "unset")
    assert curl("-x", proxy.url, "-H", "X-Greeting: hello", f"{base}/store/1")[0] == 204
    assert curl("-x", proxy.url, f"{base}/read/2") == (200, "hello")  # another rule, the same store
    (event,) = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["loggerId"] == "audit" and event["message"] == "stored /store/1"

    status, body = curl("-x", proxy.url, f"{base}/jsonp/1?cb=show")
    assert status == 200 and isinstance(body, str) and body.startswith("show({") and body.endswith("});")
    backend.reset()
    status, body = curl("-x", proxy.url, f"{base}/jsonp/crossdomain.xml")
    assert status == 200 and isinstance(body, str) and body.startswith("<cross-domain-policy>")
    assert backend.stats()["requests"] == []  # the gateway answered

    backend.reset()
    status, body = curl("-x", proxy.url, f"{base}/pool/1")
    assert status == 200 and body["claims"]["aud"] == DEMO_AUDIENCE
    assert [r["status"] for r in backend.stats()["requests"]] == [401, 200]  # member 1 refused, member 2 served
    backend.reset()
    assert curl("-x", proxy.url, f"{base}/pool/2")[0] == 200
    assert [r["status"] for r in backend.stats()["requests"]] == [200]  # member 1 is tripped: skipped
