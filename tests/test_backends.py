"""APIM backend entities: the rules file's ``backends:`` as APIM's backend resource defines them (url, credentials,
circuit-breaker rules, load-balanced pools), parsed into ``apim_mi.backends`` with located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from apim_mi.backends import (
    Authorization,
    Backend,
    BackendError,
    StatusCodeRange,
    check_pools,
    parse_backend,
    parse_duration,
)
from apim_mi.errors import LoadError
from apim_mi.rules import load_rules_text

# The AI-gateway labs' backend pool, as their Bicep deploys it (Azure-Samples/AI-Gateway, backend-pool-load-balancing).
ARM_MEMBER = {
    "properties": {
        "description": "openai-1",
        "url": "https://openai-1.openai.azure.com/openai",
        "protocol": "http",
        "circuitBreaker": {"rules": [{
            "failureCondition": {"count": 1, "errorReasons": ["Server errors"], "interval": "PT5M",
                                 "statusCodeRanges": [{"min": 429, "max": 429}]},
            "name": "openAIBreakerRule", "tripDuration": "PT1M", "acceptRetryAfter": True,
        }]},
    }
}  # fmt: skip


def test_a_url_string_is_a_single_backend() -> None:
    assert parse_backend("orders", "https://orders.test/api") == Backend("orders", url="https://orders.test/api")


def test_arm_backend_with_circuit_breaker() -> None:
    b = parse_backend("openai-1", ARM_MEMBER)
    assert (b.type, b.url, b.description) == ("single", "https://openai-1.openai.azure.com/openai", "openai-1")
    (rule,) = b.circuit_breaker
    assert (rule.name, rule.trip_duration, rule.accept_retry_after) == ("openAIBreakerRule", 60.0, True)
    cond = rule.failure_condition
    assert (cond.count, cond.interval, cond.error_reasons) == (1, 300.0, ("Server errors",))
    assert cond.status_code_ranges == (StatusCodeRange(429, 429),) and cond.counts_status(429)
    assert not cond.counts_status(500)


def test_exported_strings_for_numbers_and_credentials() -> None:
    b = parse_backend("b", {
        "url": "https://b.test", "credentials": {"header": {"api-key": ["k1"], "x-one": "v"}, "query": {"code": ["c"]},
                                                 "authorization": {"scheme": "Basic", "parameter": "dTpw"}},
        "circuitBreaker": {"rules": [{"failureCondition": {"count": "3", "interval": "PT1H",
                                                           "statusCodeRanges": [{"min": "500", "max": "599"}]},
                                      "tripDuration": "PT10M"}]},
    })  # fmt: skip
    assert b.credentials.header == (("api-key", ("k1",)), ("x-one", ("v",)))
    assert b.credentials.query == (("code", ("c",)),)
    assert b.credentials.authorization == Authorization("Basic", "dTpw")
    assert b.circuit_breaker[0].failure_condition.count == 3
    assert b.circuit_breaker[0].trip_duration == 600.0


def test_pool_members_by_arm_id_with_priority_and_weight() -> None:
    pool = parse_backend("openai-pool", {"type": "Pool", "pool": {"services": [
        {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ApiManagement/service/a/backends/openai-1",
         "priority": 1, "weight": 3},
        {"id": "/backends/openai-2", "priority": 2},
    ]}})  # fmt: skip
    assert pool.is_pool and [(m.id, m.priority, m.weight) for m in pool.pool] == [
        ("openai-1", 1, 3),
        ("openai-2", 2, 1),
    ]
    members = {"openai-1": parse_backend("openai-1", ARM_MEMBER), "openai-pool": pool}
    with pytest.raises(BackendError, match="backend 'openai-2' is not declared"):
        check_pools(members)
    check_pools({**members, "openai-2": Backend("openai-2", url="https://o2.test")})
    with pytest.raises(BackendError, match="a pool holds single backends only"):
        check_pools({**members, "openai-2": pool})


@pytest.mark.parametrize(("text", "seconds"), [("PT1M", 60), ("PT30S", 30), ("P1D", 86400), ("PT1H30M", 5400),
                                               ("00:01:30", 90), ("1.00:00:00", 86400)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("raw", "message"), [
    ("ftp://x", "url: must be an absolute http"),
    ({"type": "Pool", "pool": {"services": []}}, "a pool needs at least one member"),
    ({"type": "Other", "url": "https://x"}, "'Other' is not Single or Pool"),
    ({"url": "https://x", "circuitBreaker": {"rules": [{"tripDuration": "soon"}]}}, "'soon' is not a duration"),
    ({"url": "https://x", "circuitBreaker": {"rules": [{"failureCondition": {"count": "many"}}]}}, "not an integer"),
    ({"url": "https://x", "pool": {"services": [{"weight": 1}]}}, r"pool.services\[0\].id: is required"),
    ({"url": "https://x", "retries": 3}, "retries: is not a property of an APIM backend"),
])  # fmt: skip
def test_bad_entities_say_where(raw: object, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        parse_backend("b", raw)


def test_rules_file_backends_with_named_values_and_located_errors() -> None:
    config = load_rules_text(
        """
named_values: {key: secret-1, host: o1.test}
backends:
  orders: "https://orders.test/api"
  openai-1:
    url: "https://{{host}}/openai"
    credentials: {header: {api-key: ["{{key}}"]}}
  pool:
    type: Pool
    pool: {services: [{id: /backends/openai-1, priority: 1}]}
rules:
  - match: {host: "*"}
    resource: api://x
""",
        Path("r.yaml"),
    )
    assert config.backends["orders"].url == "https://orders.test/api"
    assert config.backends["openai-1"].url == "https://o1.test/openai"
    assert config.backends["openai-1"].credentials.header == (("api-key", ("secret-1",)),)
    assert config.backends["pool"].pool[0].id == "openai-1"
    with pytest.raises(LoadError) as e:
        load_rules_text(
            """
backends:
  pool:
    type: Pool
    pool:
      services:
        - id: /backends/missing
rules: [{match: {host: "*"}, resource: api://x}]
""",
            Path("r.yaml"),
        )
    assert str(e.value).startswith("r.yaml:7:")
    assert "backend 'pool': pool.services[0].id: backend 'missing' is not declared" in str(e.value)
