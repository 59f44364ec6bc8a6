"""The AI gateway through a real mitmdump in reverse mode, in front of the OpenAI stand-in (which validates the
managed-identity token like the demo backend): the README's scenario with the real ``openai`` client (a legacy
client with an api-key → apim-mi → "Azure OpenAI" with the managed identity, a token limit and token metrics),
streamed chunks arriving as they are sent, and a token budget that answers 429 exactly when it is used up, for plain
and streamed answers. One mitmdump and one stand-in serve the whole module."""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ai_helpers import entries, trace_of
from conftest import ROOT
from proxy import Mitmdump, start_mitmdump, write_rules
from test_metrics import samples

EXAMPLE = ROOT / "examples" / "azure-openai-gateway.xml"
TPM = 300
API_VERSION = "2024-10-21"
MI = '<authentication-managed-identity resource="https://cognitiveservices.azure.com" />'
UNBUFFERED = (f"<policies><inbound>{MI}</inbound><backend><forward-request buffer-response=\"false\" /></backend>"
              '<outbound><set-header name="x-outbound" exists-action="override"><value>ran</value></set-header>'
              "<set-body>replaced</set-body></outbound><on-error /></policies>")  # fmt: skip
TEAPOT = (f"<policies><inbound>{MI}</inbound><backend><forward-request /></backend><outbound><return-response>"
          '<set-status code="418" reason="I am a teapot" /></return-response></outbound><on-error /></policies>')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, emulator: Any, standin: Any) -> Iterator[Mitmdump]:
    tmp = tmp_path_factory.mktemp("ai")
    shutil.copy(EXAMPLE, tmp / EXAMPLE.name)
    rules = write_rules(
        tmp,
        f"""
        named_values:
          tokens-per-minute: "{TPM}"
        rules:
          - name: azure openai
            match: {{host: 127.0.0.1, path: /openai/*}}
            policy: {EXAMPLE.name}
          - name: unbuffered
            match: {{host: 127.0.0.1, path: /unbuffered/*}}
            policy: '{UNBUFFERED}'
          - name: teapot
            match: {{host: 127.0.0.1, path: /teapot/*}}
            policy: '{TEAPOT}'
    """,
    )
    md = start_mitmdump(
        ["--mode", f"reverse:{standin.url}", "--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity",
         "--set", "mi_metrics=127.0.0.1:0"],
        env=emulator.env("imds"), confdir=tmp / "confdir",
    )  # fmt: skip
    yield md
    md.stop()


def test_stream_chunks_arrive_as_sent(gateway: Mitmdump, standin: Any) -> None:
    """One chunk every 0.3 s reaches the client through the matched rule 0.3 s apart, not all at the end."""
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}
    arrivals: list[float] = []
    with httpx.Client(timeout=20) as client, client.stream(
        "POST", f"{gateway.url}/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}",
        json=body, headers={"api-key": "k", "x-standin-chunk-delay-ms": "300"},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"] == "text/event-stream"
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 6
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:4])]  # the word chunks, sent 0.3 s apart
    assert all(gap >= 0.2 for gap in gaps), gaps


def _token_totals(md: Mitmdump) -> dict[str, float]:
    """Total/Prompt/Completion Tokens the policy emitted (namespace openai), from the Prometheus endpoint."""
    port = int(md.wait_for(r"metrics and health at http://127\.0\.0\.1:(\d+)").group(1))
    scraped = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text)
    return {name: sum(v for (n, labels), v in scraped.items() if n == name and ("namespace", "openai") in labels)
            for name in ("Total_Tokens_total", "Prompt_Tokens_total", "Completion_Tokens_total")}  # fmt: skip


def test_responses_api_through_the_gateway(gateway: Mitmdump, standin: Any) -> None:
    """The Responses API with the openai client, plain and streamed: usage as input/output tokens (in the
    stream's response.completed event) is what the token metrics emit."""
    openai = pytest.importorskip("openai")
    client = openai.AzureOpenAI(azure_endpoint=gateway.url, api_key="legacy-key-123", api_version="2025-04-01-preview",
                                max_retries=0)  # fmt: skip
    before = _token_totals(gateway)
    answer = client.responses.create(model="gpt-4o", input="describe the sea")
    assert answer.output_text == "Echo: describe the sea"
    usages = [answer.usage]
    for event in client.responses.create(model="gpt-4o", input="describe the sky", stream=True):
        if event.type == "response.completed":
            usages.append(event.response.usage)
    assert len(usages) == 2
    after = _token_totals(gateway)
    assert after["Total_Tokens_total"] - before["Total_Tokens_total"] == sum(u.total_tokens for u in usages)
    assert after["Prompt_Tokens_total"] - before["Prompt_Tokens_total"] == sum(u.input_tokens for u in usages)


def test_openai_client_through_the_gateway(gateway: Mitmdump, standin: Any, emulator: Any) -> None:
    """The real openai package: api-key in, managed identity out; plain and streamed completions; the token budget
    answers 429 (openai.RateLimitError) exactly when the backend's usage has used it up."""
    openai = pytest.importorskip("openai")
    used = standin.served()["totalTokens"]  # this module's earlier requests count against the same client's budget
    assert used < TPM / 2
    client = openai.AzureOpenAI(azure_endpoint=gateway.url, api_key="legacy-key-123", api_version=API_VERSION,
                                max_retries=0)  # fmt: skip
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "Echo: hello there"
    used += answer.usage.total_tokens
    requests = standin.stats()["requests"]
    assert requests[-1]["status"] == 200 and requests[-1]["claims"]["aud"] == "https://cognitiveservices.azure.com"
    assert "api-key" not in [h.lower() for h in requests[-1]["headers"]]  # the legacy key never reaches Azure

    messages = [{"role": "user", "content": "count to three please"}]
    stream = client.chat.completions.create(
        model="gpt-4o", stream=True, stream_options={"include_usage": True}, messages=messages
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Echo: count to three please" and usage is not None
    used += usage.total_tokens
    assert used == standin.served()["totalTokens"]
    # keep spending until the budget is used up: the request that finds it used up gets 429 with Retry-After
    while used < TPM:
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "more"}])
        used += answer.usage.total_tokens
    served_before = standin.served()["requests"]
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "one more"}])
    assert err.value.response.status_code == 429
    assert int(err.value.response.headers["Retry-After"]) >= 1
    assert err.value.body == {"statusCode": 429, "message": err.value.body["message"]}
    assert err.value.body["message"].startswith("Token limit is exceeded. Try again in ")
    assert standin.served()["requests"] == served_before  # the backend never saw it

    # the token metrics the policy emitted equal what the backend reported in usage, on the Prometheus endpoint
    served = standin.served()
    total = _token_totals(gateway)
    assert total == {"Total_Tokens_total": served["totalTokens"], "Prompt_Tokens_total": served["promptTokens"],
                     "Completion_Tokens_total": served["completionTokens"]}  # fmt: skip


def _chat(md: Mitmdump, prefix: str, **kw: Any) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "tea please"}], **kw}
    return httpx.post(f"{md.url}/{prefix}/deployments/gpt-4o/chat/completions?api-version={API_VERSION}", json=body,
                      headers={"Ocp-Apim-Trace": "true"}, timeout=20, trust_env=False)  # fmt: skip


def test_buffer_response_false_streams_with_outbound_on_the_headers(gateway: Mitmdump) -> None:
    """forward-request buffer-response="false": a plain JSON answer streams too; outbound's header reaches the
    client (its set-body cannot, and the trace says so), and the trace records the transfer (bytes = the body the
    client got) instead of holding the body."""
    resp = _chat(gateway, "unbuffered")
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Echo: tea please"
    assert resp.headers["x-outbound"] == "ran"
    trace = trace_of(gateway, resp)
    warning = [d["message"] for d in entries(trace, "apim-mi") if "streamed answer" in d.get("message", "")]
    assert warning and "the backend's body streams unchanged" in warning[0]  # set-body cannot apply to a stream
    transfer = entries(trace, "transfer-response")
    assert transfer[0]["message"].startswith("Response headers have been sent to the caller. Starting to stream")
    assert transfer[1]["message"] == "Response body streaming to the caller is complete."
    assert transfer[1]["bytes"] == len(resp.content) and transfer[1]["chunks"] >= 1


def test_outbound_answer_replaces_a_stream(gateway: Mitmdump) -> None:
    """An outbound return-response on an SSE answer: the client gets the policy's answer, never the stream."""
    resp = _chat(gateway, "teapot", stream=True)
    assert resp.status_code == 418 and resp.reason_phrase == "I am a teapot"
    assert "data:" not in resp.text and resp.headers.get("content-type") != "text/event-stream"
