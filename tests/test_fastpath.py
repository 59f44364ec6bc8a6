"""The per-flow fast path: a flow keeps a compact record and its APIM trace is built only when something reads it
(content view, saved flow, trace endpoint, a script), and then it is exactly the document an eager build gives.

Tokens come from the real azure-identity ManagedIdentityCredential against the local emulator."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apim_mi import flowcontext
from apim_mi.addon import ApimMi
from apim_mi.contentview import ApimTraceContentview
from apim_mi.policy.context import Url
from apim_mi.tokens import TokenProvider, azure_credential_factory, token_key
from apim_mi.trace import METADATA_KEY, FlowRecord, Trace, canonical, computed, later, render
from conftest import DEMO_AUDIENCE
from emulator_helpers import use_emulator
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import contentviews, http
from mitmproxy import io as mitmio
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils

HOST = "api.test"


@pytest.fixture(scope="module")
def harness(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    mp = pytest.MonkeyPatch()
    use_emulator(mp, emulator)
    loop = asyncio.new_event_loop()

    async def make_provider() -> TokenProvider:
        return TokenProvider(azure_credential_factory(5.0), timeout=5.0, refresh_before=60.0)

    tokens = loop.run_until_complete(make_provider())
    try:
        yield {"loop": loop, "tokens": tokens, "dir": tmp_path_factory.mktemp("fastpath"), "emulator": emulator}
    finally:
        loop.run_until_complete(tokens.close())
        loop.close()
        mp.undo()


def _flows(harness: dict[str, Any], rules: str, *requests: tuple[bytes, tuple[tuple[bytes, bytes], ...]],
           **options: Any) -> tuple[ApimMi, list[Any]]:  # fmt: skip
    path: Path = harness["dir"] / f"rules-{abs(hash((rules, tuple(options.items()))))}.yaml"
    path.write_text(rules)

    async def run() -> tuple[ApimMi, list[Any]]:
        addon = ApimMi()
        flows = []
        with taddons.context(addon) as tctx:
            tctx.configure(addon, mi_rules=str(path), mi_credential="managed-identity", **options)
            addon.tokens = harness["tokens"]
            addon._ready = asyncio.get_running_loop().create_future()
            addon._ready.set_result(None)
            for req_path, headers in requests:
                flow = tflow.tflow(req=tutils.treq(host=HOST, port=443, path=req_path,
                                                   headers=((b"host", HOST.encode()), *headers)))  # fmt: skip
                flow.request.scheme = "https"
                if (pending := addon.request(flow)) is not None:  # sync unless there is async work
                    await pending
                if flow.response is None:
                    flow.response = tutils.tresp()
                    if (streamed := addon.responseheaders(flow)) is not None:  # a coroutine only for streams
                        await streamed
                    if (pending := addon.response(flow)) is not None:  # sync unless there is async work
                        await pending
                flows.append(flow)
        return addon, flows

    return harness["loop"].run_until_complete(run())


RULES = f"""
rules:
  - name: api
    match: {{host: "{HOST}", path: /api}}
    resource: "{DEMO_AUDIENCE}"
"""


def test_trace_is_built_only_when_read_and_saved_flows_carry_it(harness: dict[str, Any], tmp_path: Path) -> None:
    _, (flow,) = _flows(harness, RULES, (b"/api/orders", ()))
    record = flow.metadata[METADATA_KEY]
    assert isinstance(record, FlowRecord)
    assert dict.__contains__(record, "summary") and not dict.__contains__(record, "trace")  # nothing built yet
    assert record["summary"]["outcome"] == "token added to Authorization"

    # Saving (mitmdump -w: flow.get_state() deep-copies the metadata) builds it, as a plain dict.
    saved = tmp_path / "flows.mitm"
    with saved.open("wb") as f:
        mitmio.FlowWriter(f).add(flow)
    with saved.open("rb") as f:
        (read,) = list(mitmio.FlowReader(f).stream())
    from_file = read.metadata[METADATA_KEY]
    assert type(from_file) is dict and sorted(from_file) == ["summary", "trace"]
    assert render(from_file["trace"]) == render(flow.metadata[METADATA_KEY]["trace"])
    doc = canonical(from_file["trace"])  # the flow file keeps dicts in reverse order
    sources = [e["source"] for entries in doc["traceEntries"].values() for e in entries]
    assert sources == ["api-inspector", "api-inspector", "authentication-managed-identity",
                       "authentication-managed-identity", "forward-request", "forward-request", "transfer-response"]
    text = saved.read_bytes()
    issued = harness["emulator"].stats()["issued_tokens"]
    assert issued and b"Bearer [token redacted]" in text and not any(t.encode() in text for t in issued)

    # The content view (mitmweb, --flow-detail 3) reads it the same way from memory and from the file.
    view = ApimTraceContentview()
    shown = view.prettify(b"", contentviews.Metadata(flow=flow, http_message=flow.response))
    assert shown == view.prettify(b"", contentviews.Metadata(flow=read, http_message=read.response))


def test_every_read_builds_the_same_document(harness: dict[str, Any]) -> None:
    _, flows = _flows(harness, RULES, *[(b"/api/x", ())] * 6)
    docs = [
        json.loads(json.dumps(flows[0].metadata[METADATA_KEY]))["trace"],
        flows[1].metadata[METADATA_KEY].get("trace"),
        dict(flows[2].metadata[METADATA_KEY].items())["trace"],
        copy.deepcopy(flows[3].metadata)[METADATA_KEY]["trace"],
        {**flows[4].metadata[METADATA_KEY]}["trace"],
        flows[5].copy().metadata[METADATA_KEY]["trace"],
    ]
    for doc in docs:
        assert list(doc) == ["traceId", "traceEntries"] and len(doc["traceEntries"]["inbound"]) == 4
    assert "trace" in flows[0].metadata[METADATA_KEY] and len(flows[0].metadata[METADATA_KEY]) == 2


def test_no_trace_when_mi_trace_is_off(harness: dict[str, Any]) -> None:
    _, (flow,) = _flows(harness, RULES, (b"/api/x", ()), mi_trace=False)
    record = flow.metadata[METADATA_KEY]
    assert "trace" not in record and record.get("trace") is None and list(record) == ["summary"]
    assert copy.deepcopy(record) == {"summary": record["summary"]}


def test_trace_protocol_builds_the_document_for_the_asking_client_only(harness: dict[str, Any]) -> None:
    addon, (asked, plain) = _flows(harness, RULES, (b"/api/a", ((b"ocp-apim-trace", b"true"),)), (b"/api/b", ()))
    (trace_id,) = addon.inspector.store.ids()
    assert asked.response.headers["Ocp-Apim-Trace-Location"].endswith(trace_id)
    assert addon.inspector.store.get(trace_id) == asked.metadata[METADATA_KEY]["trace"]
    assert not dict.__contains__(plain.metadata[METADATA_KEY], "trace")


def test_entries_show_the_request_as_it_was_when_recorded() -> None:
    """Deferred data is computed at read time from snapshots: later changes to the flow (the token going in,
    redaction) do not reach the entry."""
    from apim_mi import inspector

    flow = tflow.tflow()
    flow.request.headers["X-Before"] = "1"
    trace = Trace("t")
    trace.add("inbound", "api-inspector", inspector.request_later(flow))
    flow.request.headers["X-After"] = "2"
    del flow.request.headers["X-Before"]
    names = [h["name"] for h in trace.to_json()["traceEntries"]["inbound"][0]["data"]["request"]["headers"]]
    assert "X-Before" in names and "X-After" not in names
    assert computed(later(canonical, {"b": 1})) == {"b": 1} and computed({"a": 1}) == {"a": 1}
    entry = later(inspector.response_entry, 200, b"OK", ((b"a", b"1"),))
    assert type(entry) is tuple and all(type(item) is not type(canonical) for item in entry)  # plain values only
    with pytest.raises(ValueError, match="module-level"):
        later(lambda a: a, 1)


def test_a_secret_registered_after_an_entry_is_still_scrubbed() -> None:
    trace = Trace("t")
    trace.add("inbound", "x", {"message": "saw eyJ.late.sig"})
    assert trace.to_json()["traceEntries"]["inbound"][0]["data"]["message"] == "saw eyJ.late.sig"
    trace.secrets.add("eyJ.late.sig")
    assert trace.to_json()["traceEntries"]["inbound"][0]["data"]["message"] == "saw [token redacted]"


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path"),
    [
        ("https", "api.test", 443, "/a/b?x=1&y=%20z"),
        ("http", "api.test", 8080, "/"),
        ("https", "API.Test", 443, "/a"),  # upper case: parsed the slow way, lower-cased as urlsplit does
        ("https", "::1", 8443, "/a?b"),
        ("https", "api.test", 443, "/a#frag"),
        ("https", "api.test", 443, "/a?"),
        ("http", "api.test", 80, "/a?q=1&q=2&e="),
        ("https", "api.test", 443, "*"),
    ],
)
def test_the_context_url_is_what_parsing_the_request_url_gives(scheme: str, host: str, port: int, path: str) -> None:
    req = tutils.treq(host=host, port=port, path=path.encode())
    req.scheme = scheme
    url, raw, received = flowcontext._url_of(req)
    expected = Url.parse(flowcontext.request_url(req))
    assert url == expected and url._raw_query == expected._raw_query and str(url) == str(expected)
    if raw is None:
        assert str(url) == flowcontext.request_url(req)
    # what context.Request.OriginalUrl is made from when first read: the same URL, as a new object
    original = Url.parse(received) if isinstance(received, str) else Url.plain(*received)
    assert original == url and original is not url and str(original) == str(url)


def test_a_policy_that_leaves_the_url_alone_does_not_rewrite_it() -> None:
    flow = tflow.tflow(req=tutils.treq(host="api.test", port=443, path=b"/a?x=%41"))
    flow.request.scheme = "https"
    ctx, received = flowcontext.request_context(flow, __import__("uuid").uuid4())
    before = flow.request.url
    ctx.request.headers.set("Authorization", ["Bearer t"])
    assert not flowcontext.apply_request(ctx.request, flow, received)  # headers changed, URL and Host did not
    assert flow.request.url == before and flow.request.headers["Authorization"] == "Bearer t"
    ctx.request.url.path = "/b"
    assert flowcontext.apply_request(ctx.request, flow, received)
    assert flow.request.path == "/b?x=%41"


def test_record_serialises_like_a_dict(harness: dict[str, Any]) -> None:
    _, (flow,) = _flows(harness, RULES, (b"/api/x", ()))
    buf = io.BytesIO()
    mitmio.FlowWriter(buf).add(flow)
    assert b"traceEntries" in buf.getvalue()


def test_log_records_skip_the_add_log_bridge_and_are_not_built_when_nobody_listens() -> None:
    import logging

    from apim_mi import logs

    class LegacyLogEvents(logging.Handler):  # mitmproxy's bridge is recognised by its class name
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(("legacy", record.getMessage()))

    class Shown(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(("shown", record.getMessage()))

    seen: list[tuple[str, str]] = []
    root, logger = logging.getLogger(), logging.getLogger("test_fastpath_routing")
    level, legacy, shown = root.level, LegacyLogEvents(), Shown(logging.WARNING)
    root.setLevel(logging.DEBUG)
    root.addHandler(legacy)
    root.addHandler(shown)
    others = [h for h in root.handlers if h not in (legacy, shown)]
    for h in others:  # pytest's own capture handlers would want every record
        root.removeHandler(h)
    try:
        logs.route(logger)
        logs.route(logger)  # idempotent (script reloads)
        assert not logs.wanted(logger, logging.INFO) and logs.wanted(logger, logging.WARNING)
        logger.warning("w")
        shown.setLevel(logging.INFO)
        assert logs.wanted(logger, logging.INFO)
        logger.info("i")
        assert seen == [("shown", "w"), ("shown", "i")]
        logs.unroute(logger)
        logger.info("after")
        assert ("legacy", "after") in seen and logs.wanted(logger, logging.INFO)
    finally:
        logs.unroute(logger)
        root.removeHandler(legacy)
        root.removeHandler(shown)
        for h in others:
            root.addHandler(h)
        root.setLevel(level)


# -- the fast path and the engine path give the same result ---------------------------------------------------------

_VOLATILE = {"timestamp", "elapsed", "elapsed_ms", "requestId", "traceId", "durationMs", "firstChunkMs"}


def _normal(data: Any) -> Any:
    """``data`` with what differs between two runs of the same flow (times, ids) replaced by its key."""
    if isinstance(data, dict):
        return {k: (k if k in _VOLATILE else _normal(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_normal(v) for v in data]
    if isinstance(data, str):
        return re.sub(r"\(\d+\.\d+ ms\)", "(ms)", data)
    return data


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("apim_mi"):
            self.lines.append(f"{record.levelname} {record.getMessage()}")


def _seen(harness: dict[str, Any], scenario: str, fast: bool, **options: Any) -> tuple[Any, bool]:
    """Everything a user can see of one flow in ``scenario`` (saved flow, comment, mark, rendered trace, log lines,
    counters), with the fast path on or off; and whether the fast path took the flow."""
    path: Path = harness["dir"] / f"eq-{abs(hash(tuple(options.items())))}.yaml"
    path.write_text(RULES)
    lines = _Lines()
    root = logging.getLogger()
    level = root.level

    async def run() -> tuple[Any, bool]:
        addon = ApimMi()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, mi_rules=str(path), mi_credential="managed-identity", **options)
            addon.tokens = harness["tokens"]
            addon._ready = asyncio.get_running_loop().create_future()
            addon._ready.set_result(None)
            await addon.tokens.get(token_key("managed-identity", "", DEMO_AUDIENCE))  # warm, whatever ran before
            flow = tflow.tflow(req=tutils.treq(host=HOST, port=443, path=b"/api/orders?id=7",
                                               headers=((b"host", HOST.encode()), (b"accept", b"*/*"))))  # fmt: skip
            flow.request.scheme = "https"
            root.addHandler(lines)
            root.setLevel(logging.DEBUG)
            try:
                await _drive(addon, flow, scenario)
            finally:
                root.removeHandler(lines)
                root.setLevel(level)
            taken = flow.id in quick_ids
            state = flow.get_state()
            seen = {
                "request": [flow.request.method, flow.request.url, flow.request.headers.fields],
                "response": None if flow.response is None else [
                    flow.response.status_code, flow.response.headers.fields, flow.response.content],
                "error": flow.error.msg if flow.error else None,
                "comment": flow.comment, "marked": flow.marked,
                "metadata": state["metadata"], "saved": json.loads(json.dumps(state["metadata"], default=str)),
                "rendered": render(_normal(flow.metadata[METADATA_KEY].get("trace") or {})),
                "log": lines.lines, "counters": dict(addon.counters), "left": len(addon._flows),
            }  # fmt: skip
            return _normal(seen), taken

    quick_ids: set[str] = set()
    original = ApimMi._quick_request

    def spy(self: ApimMi, flow: Any, rule: Any) -> bool:
        taken = original(self, flow, rule)
        if taken:
            quick_ids.add(flow.id)
        return taken

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ApimMi, "_quick_request", spy if fast else (lambda self, flow, rule: False))
        return harness["loop"].run_until_complete(run())


async def _drive(addon: ApimMi, flow: Any, scenario: str) -> None:
    """mitmproxy's hooks in its order, with what ``scenario`` changes between them."""
    if scenario == "HTTP/2":  # the authority pseudo-header instead of a Host header
        flow.request.http_version = "HTTP/2.0"
        flow.request.authority = HOST
        del flow.request.headers["host"]
    if (pending := addon.request(flow)) is not None:  # sync unless there is async work
        await pending
    if scenario == "another addon drops the token":
        del flow.request.headers["Authorization"]
    elif scenario == "another addon adds a header":
        flow.request.headers["X-Other"] = "1"
    if scenario == "upstream error":
        flow.error = Error("server disconnected")
        addon.error(flow)
        return
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    content = b'{"ok": true}'
    status = 200
    if scenario == "backend 401":
        status, headers = 401, [(b"www-authenticate", b'Bearer error="invalid_token", resource_id="api://other"')]
    elif scenario == "backend echoes the token":
        content = json.dumps({"saw": flow.request.headers["Authorization"]}).encode()
    elif scenario == "event stream":
        headers = [(b"content-type", b"text/event-stream")]
    flow.response = tutils.tresp(status_code=status, headers=tuple(headers), content=content)
    if scenario == "mitmproxy streams the answer":
        flow.response.stream = True
    if (streamed := addon.responseheaders(flow)) is not None:
        await streamed
    if scenario == "streamed once it outgrew the limit":
        flow.response.stream = True
    if (pending := addon.response(flow)) is not None:  # sync unless there is async work
        await pending


@pytest.mark.parametrize("scenario", [
    "plain", "backend 401", "backend echoes the token", "event stream", "mitmproxy streams the answer",
    "streamed once it outgrew the limit", "another addon drops the token", "another addon adds a header",
    "upstream error", "HTTP/2",
])  # fmt: skip
@pytest.mark.parametrize("options", [{}, {"mi_redact": False}, {"mi_trace": False}], ids=["", "no-redact", "no-trace"])
def test_fast_path_shows_what_the_engine_path_shows(harness: dict[str, Any], scenario: str,
                                                    options: dict[str, Any]) -> None:  # fmt: skip
    fast, taken = _seen(harness, scenario, True, **options)
    slow, _ = _seen(harness, scenario, False, **options)
    assert taken, "the fast path did not take the flow"
    assert fast == slow


@pytest.mark.parametrize("headers", [
    ((b"authorization", b"Bearer client"),), ((b"ocp-apim-trace", b"true"),),
    ((b"apim-debug-authorization", b"x"),),
])  # fmt: skip
def test_what_needs_the_engine_never_takes_the_fast_path(harness: dict[str, Any], headers: Any) -> None:
    addon, (flow,) = _flows(harness, RULES, (b"/api/x", headers))
    record = flow.metadata[METADATA_KEY]
    assert record._fill.func.__name__ == "_engine_document"  # the engine path's record, made when read
    assert record["summary"]["outcome"] == "token added to Authorization" and addon._flows == {}


def test_the_plan_is_only_for_a_policy_that_only_adds_the_token() -> None:
    from apim_mi import fastpath
    from apim_mi.policy.loader import load_policy_text

    def plan(inbound: str, backend: str = "<forward-request />", outbound: str = "") -> Any:
        return fastpath.plan_of(load_policy_text(
            f"<policies><inbound>{inbound}</inbound><backend>{backend}</backend><outbound>{outbound}</outbound>"
            "<on-error /></policies>", source="t.xml"))  # fmt: skip

    mi = '<authentication-managed-identity resource="api://a" client-id="c1" ignore-error="true" />'
    assert plan(mi) == fastpath.Plan("api://a", "c1")
    assert plan(mi, '<forward-request timeout="5" />') is None
    assert plan(mi, outbound='<set-header name="x" exists-action="delete" />') is None
    assert plan(mi + '<set-header name="x" exists-action="delete" />') is None
    assert plan('<authentication-managed-identity resource="@(&quot;api://a&quot;)" />') is None
    assert plan('<authentication-managed-identity resource="api://a" output-token-variable-name="t" />') is None


def test_a_token_is_carried_as_the_header_field_and_its_echoes() -> None:
    from apim_mi import diagnostics, fastpath
    from apim_mi.tokens import Token

    value = "aGVhZGVy.cGF5bG9hZC1wYXJ0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"  # a stand-in: no real token in the tests
    carried = fastpath.carried(Token(value, 2e9, 1e9))
    assert carried.field == (b"Authorization", b"Bearer " + value.encode())
    assert carried.echoes == (b"c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",)  # its signature, also in an echo of all of it
    sent = fastpath.with_token(((b"host", b"x"),), carried.field)
    assert sent == ((b"host", b"x"), carried.field) and fastpath.redacted(sent)[-1] == (b"Authorization",
                                                                                      b"Bearer [token redacted]")
    assert diagnostics.reflects(b'{"seen": "' + value.encode() + b'"}', carried.echoes)
    assert diagnostics.reflects(b"sig c2lnbmF0dXJlLW9mLXRoZS10b2tlbg", carried.echoes)
    assert not diagnostics.reflects(b"nothing", carried.echoes) and not diagnostics.reflects(None, carried.echoes)


@pytest.mark.parametrize("value", ["1", '@("1")'])
def test_an_internal_error_in_outbound_is_what_the_summary_and_comment_say(harness: dict[str, Any], value: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """apim-mi failing inside outbound answers APIM's 500, and the flow's summary and comment (made once the flow
    ends, the summary when read) say so instead of the policy's outcome: in the engine (an expression), and in the
    literal header edits that run without it."""
    from apim_mi.policy import engine
    from apim_mi.policy.statements import core

    def broken(*args: Any) -> None:
        raise RuntimeError("outbound broke")

    async def broken_async(*args: Any) -> None:
        broken()

    monkeypatch.setattr(engine, "run_outbound", broken_async)
    monkeypatch.setattr(core, "apply_header_edits", broken)
    rules = RULES.replace(f'    resource: "{DEMO_AUDIENCE}"\n', f"""    policy: |
      <policies>
        <inbound><authentication-managed-identity resource="{DEMO_AUDIENCE}" /></inbound>
        <backend><forward-request /></backend>
        <outbound><set-header name="X-Out" exists-action="override"><value>{value}</value></set-header></outbound>
      </policies>
""")
    _, (flow,) = _flows(harness, rules, (b"/api/x", ()))
    assert flow.response.status_code == 500 and b"Internal server error" in flow.response.content
    outcome = "failed: internal error RuntimeError('outbound broke')"
    assert flow.metadata[METADATA_KEY]["summary"]["outcome"] == outcome
    assert outcome in flow.comment and flow.marked == ":x:"


def test_a_request_id_is_a_random_version_4_uuid() -> None:
    """``RequestIds`` makes what ``uuid.uuid4()`` makes, without its checks: version 4, RFC 4122 variant, random,
    and it reads back from its string; across more than one batch of system randomness, none repeats."""
    import uuid

    source = flowcontext.RequestIds()
    ids = [source.next() for _ in range(flowcontext.RequestIds.BATCH * 2 + 10)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        assert type(request_id) is uuid.UUID and request_id.version == 4 and request_id.variant == uuid.RFC_4122
        assert uuid.UUID(str(request_id)) == request_id and request_id.is_safe is uuid.uuid4().is_safe
    assert len({i.int >> 120 for i in ids}) > 100  # the random bits reach the top byte


def test_the_original_url_made_when_read_is_the_url_as_received() -> None:
    """``context.Request.OriginalUrl`` and the body are made from the flow only when read: a policy that rewrote the
    URL in place first still sees the URL as received, and a body never read is never written back."""
    flow = tflow.tflow(req=tutils.treq(host="api.test", port=443, path=b"/a/b?x=1"))
    flow.request.scheme = "https"
    ctx, received = flowcontext.request_context(flow, __import__("uuid").uuid4())
    request = ctx.request
    request.url.path = "/rewritten"
    request.url.query.set("x", ["2"])
    assert str(request.original_url) == "https://api.test/a/b?x=1"
    assert request.body_if_read() is None and request.body is not None and request.body.content == b"content"
    assert request.body_if_read() is request.body
    flowcontext.apply_request(request, flow, received)
    assert flow.request.path == "/rewritten?x=2" and flow.request.content == b"content"


_FIELD_BYTES = st.binary(max_size=12) | st.sampled_from([b"Host", b"x-\xc3\xa9", b"\xff\xfe", b"\xed\xa0\x80", b""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=6))
def test_header_fields_decode_and_encode_as_surrogateescape_does(fields: list[tuple[bytes, bytes]]) -> None:
    """``decoded``/``encoded`` skip the error handler for valid UTF-8 (the usual header): the same strings and bytes
    as decoding and encoding every field with surrogateescape, for any bytes, and back to the same fields."""
    as_fields = tuple(fields)
    pairs = flowcontext.decoded(as_fields)
    assert pairs == [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in fields]
    assert flowcontext.encoded(pairs) == as_fields


@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=5))
def test_header_pairs_encode_as_surrogateescape_does_or_fail_as_it_fails(pairs: list[tuple[str, str]]) -> None:
    """Any strings, lone surrogates included: what surrogateescape encodes, or the same UnicodeEncodeError."""
    try:
        expected = tuple((n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for n, v in pairs)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            flowcontext.encoded(pairs)
    else:
        assert flowcontext.encoded(pairs) == expected


_EDIT_NAMES = ["X-Powered-By", "x-powered-by", "Server", "X-\u0130d", "x-i\u0307d", "Set-Cookie", "X-New"]


@st.composite
def _outbound_edits(draw: Any) -> str:
    edits = ["<base />"] if draw(st.booleans()) else []  # at most one per section
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(_EDIT_NAMES))
        action = draw(st.sampled_from(["override", "skip", "append", "delete", "Override"]))
        values = "".join(f"<value>{v}</value>" for v in draw(st.lists(st.sampled_from(["1", "a b", ""]), max_size=2)))
        edits.append(f'<set-header name="{name}" exists-action="{action}">{values}</set-header>')
    return "".join(edits)


@settings(max_examples=200, deadline=None)
@given(_outbound_edits(), st.lists(st.tuples(st.sampled_from([n.encode() for n in _EDIT_NAMES] + [b"Date"]),
                                             st.sampled_from([b"v", b"w", b"\xff"])), max_size=5))
def test_literal_header_edits_do_what_the_engine_does(outbound: str, fields: list[tuple[bytes, bytes]]) -> None:
    """An outbound of literal set-headers runs on the answer's headers directly (``core.header_edits``): the same
    answer, and the same trace entries, as running the section through the engine and writing its response back."""
    from apim_mi.policy import engine
    from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
    from apim_mi.policy.statements import core
    from test_statements import make_run, policies

    xml = policies(outbound=outbound)
    policy = compose(DEFAULT_GLOBAL, load_policy_text(xml, source="t.xml"))
    edits = core.header_edits(policy, "outbound")
    assert edits is not None and core.header_edits(policy, "outbound") is edits  # worked out once

    def answer() -> http.Response:
        resp = tutils.tresp()
        resp.data.headers.fields = tuple(fields)
        return resp

    by_engine, run = tflow.tflow(resp=answer()), make_run(xml)
    run.context.response, received = flowcontext.response_context(by_engine.response)
    asyncio.run(engine.run_outbound(run))
    assert run.response is None and run.error is None
    flowcontext.apply_response(run.context.response, by_engine, received)

    direct, quick = tflow.tflow(resp=answer()), make_run(xml)
    headers, read = flowcontext.response_headers(direct.response)
    core.apply_header_edits(quick, edits, headers, "outbound")
    flowcontext.apply_response_headers(headers, direct.response, read)

    assert direct.response.data.headers.fields == by_engine.response.data.headers.fields
    shown = [[(e["source"], e["data"]) for e in r.trace.entries.get("outbound", [])]
             for r in (run, quick)]
    assert shown[0] == shown[1] and len(shown[0]) == outbound.count("<set-header")


@pytest.mark.parametrize("outbound", [
    '<set-header name="@(&quot;X&quot;)" exists-action="delete" />',
    '<set-header name="X" exists-action="override"><value>@(context.RequestId.ToString())</value></set-header>',
    '<set-header name="X" exists-action="override"><value>a&#10;b</value></set-header>',
    '<set-header name="X" exists-action="delete" /><set-status code="201" />',
    '<choose><when condition="@(true)"><set-header name="X" exists-action="delete" /></when></choose>',
])  # fmt: skip
def test_what_is_not_a_literal_header_edit_runs_in_the_engine(outbound: str) -> None:
    """An expression, a line break (an error the engine raises), or any other statement: the section is no header
    edit list, and the engine runs it."""
    from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
    from apim_mi.policy.statements import core
    from test_statements import policies

    policy = compose(DEFAULT_GLOBAL, load_policy_text(policies(outbound=outbound), source="t.xml"))
    assert core.header_edits(policy, "outbound") is None
