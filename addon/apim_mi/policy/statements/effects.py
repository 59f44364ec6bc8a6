"""Side effects, made visible locally: send-one-way-request (fire and forget), wait (all / any) and log-to-eventhub (a
JSON-lines file per logger id the rules file names under ``loggers:``, else mitmproxy's event log). emit-metric lives
with the AI gateway's metrics (``statements/ai.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

from ...errors import PolicyError
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate_string, run_statements
from ..model import Statement
from ._common import int_attr, str_attr
from .backends import side_send
from .http import build_side_request, side_mode

log = logging.getLogger(__name__)

SOURCE = "send-one-way-request"


async def send_one_way_request(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Builds the request like send-request, sends it in the background and goes on at once; the answer (or the
    failure) only reaches the event log, as APIM never shows it."""
    mode = await side_mode(run, stmt, scope, SOURCE)
    timeout = float(await int_attr(run, stmt, "timeout", scope, source=SOURCE) or 60)
    request = await build_side_request(run, stmt, scope, mode)
    url = str(request.url)
    headers = [(n, v) for n, v in request.headers.pairs() if n.lower() not in ("content-length", "host")]
    body = request.body.content if request.body is not None else None
    run.trace.add(scope.section, SOURCE, {
        "message": f"Sending request to {url} without waiting for the response. Timeout set to {timeout:g} seconds.",
        "request": {"method": request.method, "url": url, "headers": [{"name": n, "value": v} for n, v in headers]},
        **UNVERIFIED,
    })  # fmt: skip

    async def send() -> None:
        try:
            response = await side_send(run, request.method, url, headers, body, timeout)
            log.info("apim-mi: send-one-way-request %s %s answered %d", request.method, url, response.status_code)
        except Exception as e:  # nobody waits for it: the event log is the only place a failure can show
            log.warning("apim-mi: send-one-way-request %s %s failed: %s: %s", request.method, url, type(e).__name__, e)

    run.services.state.spawn(send())


async def wait(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Runs each child concurrently; ``for="all"`` waits for every one, ``for="any"`` for the first (the others are
    cancelled). A failing child fails the wait."""
    mode = (stmt.attr("for") or "all").strip().lower()
    tasks = [asyncio.ensure_future(run_statements(run, [child], scope)) for child in stmt.children]
    if not tasks:
        return
    if mode == "any":
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    else:
        done, _ = await asyncio.wait(tasks)
    run.trace.add(scope.section, "wait", {
        "message": f"Waited for {'any' if mode == 'any' else 'all'} of {len(tasks)} policies; {len(done)} completed.",
        **UNVERIFIED,
    })  # fmt: skip
    for t in done:
        exc = t.exception()
        if exc is not None:
            raise exc


async def log_to_eventhub(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    logger_id = stmt.attr("logger-id") or ""
    message = await evaluate_string(run, stmt.text, "log-to-eventhub", scope) or ""
    partition_key = await str_attr(run, stmt, "partition-key", scope)
    event = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "loggerId": logger_id,
        "partitionId": stmt.attr("partition-id"),
        "partitionKey": partition_key,
        "requestId": str(run.context.request_id),
        "message": message,
    }
    sink = run.services.state.loggers.get(logger_id)
    if sink is not None:
        try:
            with sink.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, ensure_ascii=False) + "\n")
        except OSError as e:
            raise PolicyError("log-to-eventhub", f"Cannot write logger '{logger_id}''s file {sink}: {e.strerror}.",
                              "LoggerNotAvailable") from None  # fmt: skip
        where = f"the JSON-lines file {sink}"
    else:
        log.info("apim-mi: log-to-eventhub [%s]: %s", logger_id, message)
        where = "mitmproxy's event log (no file is named for this logger under loggers:)"
    run.trace.add(scope.section, "log-to-eventhub", {
        "message": f"Event for logger '{logger_id}' ({len(message)} characters) written to {where}.", **UNVERIFIED,
    })  # fmt: skip


HANDLERS = {
    SOURCE: send_one_way_request,
    "wait": wait,
    "log-to-eventhub": log_to_eventhub,
}
