"""Side effects: send-one-way-request (fire and forget), wait all/any, log-to-eventhub (JSON-lines sink per logger
id, else the event log)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Headers, Response
from apim_mi.policy.gateway import GatewayState
from test_statements import entries, make_run, policies


class Slow:
    """A side-request sender whose answers per host arrive when the test says so."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.sent: list[str] = []

    async def __call__(self, method: str, url: str, headers: Any, body: Any, timeout: float) -> Response:
        host = url.split("/")[2]
        self.sent.append(host)
        await self.gates.setdefault(host, asyncio.Event()).wait()
        return Response(200, "OK", Headers(), Body(json.dumps({"host": host}).encode()))


async def test_send_one_way_request_does_not_wait() -> None:
    slow = Slow()
    run = make_run(policies('<send-one-way-request mode="new"><set-url>https://hook.test/x</set-url>'
                            "<set-method>POST</set-method><set-body>hi</set-body></send-one-way-request>"),
                   sender=slow)  # type: ignore[arg-type]
    state = run.services.state
    await engine.run_inbound(run)
    assert run.forward and run.response is None
    assert "without waiting" in entries(run, "send-one-way-request")[0]["message"]
    await asyncio.sleep(0)
    assert slow.sent == ["hook.test"] and len(state.tasks) == 1
    slow.gates["hook.test"].set()
    await asyncio.gather(*state.tasks)


@pytest.mark.parametrize("mode", ["all", "any"])
async def test_wait_all_and_any(mode: str) -> None:
    slow = Slow()
    xml = policies(f'<wait for="{mode}">'
                   '<send-request mode="new" response-variable-name="a"><set-url>https://a.test/</set-url></send-request>'
                   '<send-request mode="new" response-variable-name="b"><set-url>https://b.test/</set-url></send-request>'
                   "</wait>")  # fmt: skip
    run = make_run(xml, sender=slow)  # type: ignore[arg-type]
    task = asyncio.ensure_future(engine.run_inbound(run))
    await asyncio.sleep(0.01)
    assert sorted(slow.sent) == ["a.test", "b.test"]  # both started before either answered
    slow.gates["b.test"].set()
    await asyncio.sleep(0.01)
    assert task.done() is (mode == "any")
    slow.gates["a.test"].set()
    await task
    assert "b" in run.context.variables
    assert ("a" in run.context.variables) is (mode == "all")


async def test_log_to_eventhub_file_sink_and_event_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = tmp_path / "events.jsonl"
    xml = policies('<log-to-eventhub logger-id="audit" partition-key="@(context.Request.Method)">'
                   '@($"{context.Request.Method} {context.Request.Url.Path}")</log-to-eventhub>'
                   '<log-to-eventhub logger-id="other">plain</log-to-eventhub>')  # fmt: skip
    run = make_run(xml)
    run.services.state = GatewayState(loggers={"audit": sink})
    with caplog.at_level(logging.INFO):
        await engine.run_inbound(run)
    (event,) = [json.loads(line) for line in sink.read_text().splitlines()]
    assert event["message"] == "GET /orders/42" and event["loggerId"] == "audit" and event["partitionKey"] == "GET"
    assert event["requestId"] == str(run.context.request_id)
    assert "log-to-eventhub [other]: plain" in caplog.text



async def test_deployed_shape_token_in_outbound_for_a_side_call() -> None:
    """As deployed AI-gateway/MCP policies do: authentication-managed-identity in outbound (outside its documented
    section: a load warning, not an error) puts a token into a variable that a side request then carries."""
    from test_statements import FakeSender

    sender = FakeSender()
    xml = ("<policies><inbound /><backend><forward-request /></backend><outbound>"
           '<authentication-managed-identity resource="https://management.azure.com/" output-token-variable-name="t" />'
           '<send-one-way-request mode="new"><set-url>https://audit.test/log</set-url><set-method>POST</set-method>'
           '<set-header name="Authorization" exists-action="override"><value>@("Bearer " + '
           '(string)context.Variables["t"])</value></set-header></send-one-way-request>'
           "</outbound></policies>")  # fmt: skip
    run = make_run(xml, sender=sender)
    assert any("'authentication-managed-identity' is outside its documented sections" in w
               for w in run.policy.warnings)  # fmt: skip
    await engine.run_inbound(run)
    run.context.response = Response(200, "OK", Headers(), Body(b"{}"))
    await engine.run_outbound(run)
    await asyncio.gather(*run.services.state.tasks)
    (sent,) = sender.sent
    assert sent["url"] == "https://audit.test/log" and sent["headers"]["Authorization"].startswith("Bearer ey")
    assert run.injections == []  # the token went to the side call only


async def test_what_cannot_run_on_one_machine_loads_and_fails_loudly_with_the_reason() -> None:
    run = make_run(policies('<invoke-dapr-binding name="orders" operation="create" />'))
    await engine.run_inbound(run)
    assert run.response is not None and run.response.status_code == 500
    error = run.context.last_error
    assert error.reason == "PolicyNotSupported" and "Dapr sidecar" in error.message
