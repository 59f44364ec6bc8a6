"""Azure-Samples/AI-Gateway lab policies (../shared/corpus/realworld/ai-gateway/apiops or
$APIM_MI_REALWORLD_CORPUS/ai-gateway/apiops, not vendored; skipped when absent; each names its source in its first
line) run as the labs deploy them: each is the API policy of an Azure OpenAI API in an APIOps extraction built here,
with the API's subscription key in ``api-key`` (as the labs' Bicep configures it), so ``context.Subscription`` is the
real one; the labs' backends have managed-identity credentials (``credentials.managedIdentity``, as their Bicep creates
them) and point at the OpenAI / Content Safety stand-in, which accepts only the managed identity's token. One mitmdump
(reverse mode, acting as the gateway) serves the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ai_helpers import entries, trace_of
from conftest import REALWORLD
from proxy import Mitmdump, start_mitmdump, write_rules

DATA = REALWORLD / "ai-gateway" / "apiops"
LABS = sorted(p.stem for p in DATA.glob("*.xml"))
KEY = "lab-subscription-key"
QUERY = "api-version=2024-10-21"
BACKENDS = ("openai-backend", "gemini-backend", "inference-backend", "content-safety-backend", "embeddings-backend")
#: What the labs' deployment fills in (zero-to-production.ipynb: tokens_per_minute = 500, three backends → 2 retries).
PLACEHOLDERS = {"{backend-id}": "openai-backend", "{retry-count}": "2", "{tpm}": "500"}
GLOBAL = """<policies>
    <inbound />
    <backend><forward-request /></backend>
    <outbound />
    <on-error />
</policies>
"""
SPEC = """openapi: 3.0.1
info: {title: Azure OpenAI, version: '2024-10-21'}
servers:
  - url: https://example.openai.azure.com/openai
paths:
  /deployments/{deployment-id}/chat/completions:
    post: {operationId: ChatCompletions_Create, responses: {'200': {description: ''}}}
  /deployments/{deployment-id}/completions:
    post: {operationId: Completions_Create, responses: {'200': {description: ''}}}
  /deployments/{deployment-id}/embeddings:
    post: {operationId: embeddings_create, responses: {'200': {description: ''}}}
"""

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"AI-Gateway lab policies not at {DATA} (see ../shared/corpus/realworld/README.md)"
)


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"properties": data}, indent=2))


def extraction(root: Path) -> Path:
    """apimartifacts/ with one API per lab (``{backend-id}`` filled as the labs' Bicep fills it)."""
    art = root / "apimartifacts"
    art.mkdir(parents=True)
    (art / "policy.xml").write_text(GLOBAL)
    for lab in LABS:
        api = art / "apis" / lab
        _json(api / "apiInformation.json", {
            "displayName": lab, "path": f"{lab}/openai", "protocols": ["https"],
            "serviceUrl": "https://example.openai.azure.com/openai", "subscriptionRequired": True,
            "subscriptionKeyParameterNames": {"header": "api-key", "query": "api-key"},
        })  # fmt: skip
        (api / "specification.yaml").write_text(SPEC)
        text = (DATA / f"{lab}.xml").read_text()
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        (api / "policy.xml").write_text(text)
    for name in BACKENDS:
        _json(art / "backends" / name / "backendInformation.json", {  # as the labs' Bicep creates them
            "url": "https://x.invalid", "protocol": "http",
            "credentials": {"managedIdentity": {"resource": "https://cognitiveservices.azure.com"}},
        })  # fmt: skip
    _json(art / "subscriptions" / "master" / "subscriptionInformation.json", {
        "displayName": "Built-in all-access subscription", "state": "active",
        "scope": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ApiManagement/service/ai-gateway/apis",
    })  # fmt: skip
    return art


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, emulator: Any, standin: Any) -> Iterator[Mitmdump]:
    tmp = tmp_path_factory.mktemp("labs")
    art = extraction(tmp)
    urls = {name: standin.url for name in BACKENDS}
    urls["embeddings-backend"] = f"{standin.url}/openai/deployments/text-embedding-3-small/embeddings?{QUERY}"
    backends = ", ".join(f"{name}: {{url: '{url}'}}" for name, url in urls.items())
    apis = ", ".join(f"{lab}: {{serviceUrl: '{standin.url}/openai'}}" for lab in LABS)
    rules = write_rules(tmp, f"""
        apim:
          extraction: {art}
          apis: {{{apis}}}
          backends: {{{backends}}}
          subscriptions: {{master: {KEY}}}
    """)
    md = start_mitmdump(
        ["--mode", "reverse:http://127.0.0.1:9", "--set", f"mi_rules={rules}",
         "--set", "mi_credential=managed-identity"],
        env=emulator.env("imds"), confdir=tmp / "confdir",
    )  # fmt: skip
    yield md
    md.stop()


def test_every_lab_names_its_source() -> None:
    assert len(LABS) >= 8
    for lab in LABS:
        assert (DATA / f"{lab}.xml").read_text().startswith("<!-- Source: https://github.com/Azure-Samples/AI-Gateway ")


def ask(md: Mitmdump, lab: str, prompt: str, *, key: str = KEY, **kw: Any) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}], **kw}
    url = f"{md.url}/{lab}/openai/deployments/gpt-4o/chat/completions?{QUERY}"
    return httpx.post(url, json=body, headers={"api-key": key, "Ocp-Apim-Trace": "true", "x-user-id": "u1"},
                      timeout=20, trust_env=False)  # fmt: skip


@pytest.mark.parametrize("lab", LABS)
def test_lab_runs_end_to_end(gateway: Mitmdump, standin: Any, lab: str) -> None:
    """Every lab answers through the gateway with the managed identity's token, and the token metrics it emits
    equal the backend's usage (dimensions from the real context.Subscription / context.Api)."""
    resp = ask(gateway, lab, f"hello from {lab}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == f"Echo: hello from {lab}"
    seen = standin.stats()["requests"][-1]
    assert seen["status"] == 200 and seen["claims"]["aud"] == "https://cognitiveservices.azure.com"
    assert "api-key" in [h.lower() for h in seen["headers"]]  # APIM forwards the subscription key unless removed
    trace = trace_of(gateway, resp)
    usage = resp.json()["usage"]
    emitted = [d for name in ("azure-openai-emit-token-metric", "llm-emit-token-metric")
               for d in entries(trace, name) if "metrics" in d]  # fmt: skip
    for d in emitted:
        assert d["metrics"] == {"Total Tokens": usage["total_tokens"], "Prompt Tokens": usage["prompt_tokens"],
                                "Completion Tokens": usage["completion_tokens"]}  # fmt: skip
        for dim in ("Subscription ID", "oid"):
            if dim in d["dimensions"]:
                assert d["dimensions"][dim] == "master"
        if "API ID" in d["dimensions"]:
            assert d["dimensions"]["API ID"] == lab
    limits = [d for name in ("azure-openai-token-limit", "llm-token-limit")
              for d in entries(trace, name) if "usage" in d]  # fmt: skip
    for d in limits:
        assert d["usage"]["totalTokens"] == usage["total_tokens"]
    policy = (DATA / f"{lab}.xml").read_text()
    assert bool(emitted) == ("emit-token-metric" in policy) and bool(limits) == ("token-limit" in policy)
    assert bool(entries(trace, "llm-content-safety")) == ("<llm-content-safety" in policy)


def test_wrong_subscription_key_is_apims_401(gateway: Mitmdump) -> None:
    resp = ask(gateway, "token-metrics-emitting", "hi", key="wrong")
    assert resp.status_code == 401 and "invalid subscription key" in resp.json()["message"]


def test_token_rate_limiting_lab_answers_429_exactly_when_the_subscription_used_its_100_tokens(
    gateway: Mitmdump,
) -> None:
    """The lab's llm-token-limit: 100 tokens per minute per subscription (the counter APIM shares across APIs, so
    the other labs' limits on the same subscription count too), charged from the answers' usage."""
    expected_used = None
    for i in range(30):
        resp = ask(gateway, "token-rate-limiting", f"spend some tokens {i}")
        budget = [d for d in entries(trace_of(gateway, resp), "llm-token-limit") if "tokensPerMinute" in d or
                  "retryAfter" in d]  # fmt: skip
        if resp.status_code == 429:
            break
        assert resp.status_code == 200, resp.text
        used_before = budget[0]["tokensUsedLastMinute"]
        assert used_before < 100 and (expected_used is None or used_before == expected_used)
        expected_used = used_before + resp.json()["usage"]["total_tokens"]
    assert resp.status_code == 429, "the budget was never exhausted"
    assert expected_used is not None and expected_used >= 100
    assert f": {expected_used} used" in budget[0]["message"]  # refused exactly once the usage reached the limit
    assert resp.json()["message"].startswith("Token limit is exceeded. Try again in ")
    assert int(resp.headers["Retry-After"]) >= 1


def test_gemini_mcp_agents_lab_blocks_harmful_prompts(gateway: Mitmdump) -> None:
    """The lab's llm-content-safety with every category at threshold 1 (EightSeverityLevels)."""
    assert ask(gateway, "gemini-mcp-agents", "I despise rainy days").status_code == 403
    assert ask(gateway, "gemini-mcp-agents", "what a sunny day").status_code == 200
