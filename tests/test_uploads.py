"""Requests whose body mitmproxy streams (``stream_large_bodies``): every matched request arrives with a valid token
or fails closed with its cause, and nothing claims a token the backend never saw. Through one real mitmdump with
``stream_large_bodies=1k``, curl (HTTP/1.1 and HTTP/2 over CONNECT) and the validating backend."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DEMO_AUDIENCE
from proxy import MITMDUMP, ROOT, Mitmdump, curl, proxy_for, start_mitmdump, write_rules
from test_metrics import samples, value

SMALL, LARGE = 500, 5000  # under and over the 1k limit

_BODY_POLICY = """\
<policies>
  <inbound>
    <authentication-managed-identity resource="{aud}" ignore-error="{ignore}" />
    <choose>
      <when condition='@(context.Request.Headers.GetValueOrDefault("X-Skip-Body", "") != "yes")'>
        <set-variable name="size" value="@(context.Request.Body.As&lt;string&gt;(preserveContent: true).Length)" />
      </when>
    </choose>
  </inbound>
  <backend><forward-request /></backend>
  <outbound />
  <on-error />
</policies>
"""

# Another addon, loaded after apim-mi: strips the token in `request`, or starts streaming after our requestheaders.
_MEDDLER = """\
class Meddler:
    def requestheaders(self, flow):
        if flow.request.path.startswith("/late-stream"):
            flow.request.stream = True

    def request(self, flow):
        if flow.request.path.startswith("/stripped"):
            flow.request.headers.pop("Authorization", None)


addons = [Meddler()]
"""


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, emulator: Any, backend: Any, tls_backend: Any, certs: dict[str, Path]
) -> Iterator[tuple[Mitmdump, Path]]:
    d = tmp_path_factory.mktemp("streaming")
    host = f"127.0.0.1:{backend.port}"
    (d / "body.xml").write_text(_BODY_POLICY.format(aud=DEMO_AUDIENCE, ignore="false"))
    (d / "lenient.xml").write_text(_BODY_POLICY.format(aud=DEMO_AUDIENCE, ignore="true"))
    (d / "meddler.py").write_text(_MEDDLER)
    rules = write_rules(d, f"""
        rules:
          - {{name: upload, match: {{host: "{host}", path: /upload}}, resource: "{DEMO_AUDIENCE}"}}
          - {{name: tls upload, match: {{host: localhost, path: /upload, scheme: https}}, resource: "{DEMO_AUDIENCE}"}}
          - {{name: stripped, match: {{host: "{host}", path: /stripped}}, resource: "{DEMO_AUDIENCE}"}}
          - {{name: late, match: {{host: "{host}", path: /late-stream}}, resource: "{DEMO_AUDIENCE}"}}
          - {{name: reads body, match: {{host: "{host}", path: /inspect}}, policy: body.xml}}
          - {{name: lenient, match: {{host: "{host}", path: /lenient}}, policy: lenient.xml}}
    """)
    flows = d / "flows.mitm"
    md = proxy_for(
        d, emulator, rules, "--set", "stream_large_bodies=1k", "--set", f"ssl_verify_upstream_trusted_ca={certs['ca']}",
        "--set", "mi_metrics=127.0.0.1:0", "-w", str(flows), "-s", str(d / "meddler.py"),
    )  # fmt: skip
    yield md, flows
    md.stop()


def _post(md: Mitmdump, url: str, size: int, *extra: str, chunked: bool = False) -> tuple[int, Any]:
    body = "x" * size
    args = ["-x", md.url, "-H", "Content-Type: text/plain", "--data-binary", body, *extra, url]
    if chunked:
        args = ["-H", "Transfer-Encoding: chunked", *args]
    return curl(*args)


def _backend_saw(backend: Any, since: int) -> list[Any]:
    return backend.stats().requests[since:]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["under", "over"])
def test_uploads_carry_a_valid_token(proxy: tuple[Mitmdump, Path], backend: Any, size: int, chunked: bool) -> None:
    md, _ = proxy
    status, body = _post(md, f"{backend.url}/upload/{size}-{int(chunked)}", size, chunked=chunked)
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE
    assert body["body_bytes"] == size
    md.wait_for(rf"POST http://127\.0\.0\.1:\d+/upload/{size}-{int(chunked)} \[upload\] .*token added to Authorization")


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_uploads_over_connect(
    proxy: tuple[Mitmdump, Path], tls_backend: Any, http2: bool, chunked: bool, tmp_path_factory: Any
) -> None:
    md, _ = proxy
    mitm_ca = md_confdir(md) / "mitmproxy-ca-cert.pem"
    url = f"https://localhost:{tls_backend.port}/upload/tls-{int(http2)}-{int(chunked)}"
    version = "--http2" if http2 else "--http1.1"
    status, body = _post(md, url, LARGE, "--cacert", str(mitm_ca), version, chunked=chunked and not http2)
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE
    assert body["body_bytes"] == LARGE


def md_confdir(md: Mitmdump) -> Path:
    return Path(next(a.split("=", 1)[1] for a in md.proc.args if str(a).startswith("confdir=")))  # type: ignore[union-attr]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_policy_on_a_streamed_request_fails_closed(
    proxy: tuple[Mitmdump, Path], backend: Any, chunked: bool
) -> None:
    md, _ = proxy
    before = backend.stats().total
    path = f"/inspect/large-{int(chunked)}"
    status, body = _post(md, f"{backend.url}{path}", LARGE, chunked=chunked)
    assert status == 500
    assert body["message"] == "Internal server error" and body["statusCode"] == 500
    assert _backend_saw(backend, before) == [], "the request reached the backend"
    line = md.wait_for(rf"POST http://127\.0\.0\.1:\d+{path} \[reads body\] failed closed: (.*)").group(1)
    assert "stream_large_bodies=1k" in line and "Raise stream_large_bodies" in line


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_policy_on_a_buffered_request_runs(proxy: tuple[Mitmdump, Path], backend: Any, chunked: bool) -> None:
    md, _ = proxy
    status, body = _post(md, f"{backend.url}/inspect/small-{int(chunked)}", SMALL, chunked=chunked)
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE and body["body_bytes"] == SMALL


def test_body_read_in_a_branch_not_taken_does_not_stop_a_streamed_request(
    proxy: tuple[Mitmdump, Path], backend: Any
) -> None:
    md, _ = proxy
    status, body = _post(md, f"{backend.url}/inspect/skip", LARGE, "-H", "X-Skip-Body: yes")
    assert status == 200, body
    assert body["claims"]["aud"] == DEMO_AUDIENCE and body["body_bytes"] == LARGE


def test_ignore_error_forwards_a_streamed_request_unchanged(proxy: tuple[Mitmdump, Path], backend: Any) -> None:
    md, _ = proxy
    status, body = _post(md, f"{backend.url}/lenient/large", LARGE)
    assert status == 401, body  # no token: the backend refuses, as it would without the proxy
    md.wait_for(r"/lenient/large \[lenient\] .*forwarded unchanged \(ignore-error\)")
    assert not re.search(r"/lenient/large .*token added", md.text())


def test_a_token_removed_after_the_policy_is_never_claimed(proxy: tuple[Mitmdump, Path], backend: Any) -> None:
    md, _ = proxy
    status, _ = curl("-x", md.url, f"{backend.url}/stripped/1")
    assert status == 401
    md.wait_for(r"GET http://127\.0\.0\.1:\d+/stripped/1 \[stripped\] The request went upstream without the token")
    assert not re.search(r"/stripped/1 .*token added", md.text())


def test_streaming_started_by_a_later_addon_is_recorded_as_an_error(
    proxy: tuple[Mitmdump, Path], backend: Any
) -> None:
    md, _ = proxy
    status, _ = _post(md, f"{backend.url}/late-stream/1", SMALL)
    assert status == 401
    md.wait_for(r"/late-stream/1 \[late\] sent without a token: another addon set flow.request.stream")
    assert not re.search(r"/late-stream/1 .*token added", md.text())


def test_counters_follow_what_went_upstream(proxy: tuple[Mitmdump, Path], backend: Any) -> None:
    """The per-rule counters (scraped from /metrics with prometheus-client's parser) count an injection only when
    the request that left carried the token."""
    md, _ = proxy
    port = int(md.wait_for(r"metrics and health at http://127\.0\.0\.1:(\d+)").group(1))

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text)

    before = scrape()
    assert curl("-x", md.url, f"{backend.url}/stripped/counted")[0] == 401
    assert _post(md, f"{backend.url}/late-stream/counted", SMALL)[0] == 401
    assert _post(md, f"{backend.url}/upload/counted", LARGE)[0] == 200
    assert _post(md, f"{backend.url}/inspect/counted", LARGE)[0] == 500
    md.wait_for(r"/inspect/counted \[reads body\] failed closed")
    after = scrape()

    def moved(name: str, rule: str) -> float:
        return value(after, name, rule=rule) - value(before, name, rule=rule)

    injected, failed = "apim_mi_requests_injected_total", "apim_mi_requests_failed_closed_total"
    assert [moved(injected, r) for r in ("upload", "stripped", "late", "reads body")] == [1, 0, 0, 0]
    assert [moved(failed, r) for r in ("upload", "stripped", "late", "reads body")] == [0, 1, 1, 1]


def test_saved_flows_tell_the_same_story(proxy: tuple[Mitmdump, Path], backend: Any) -> None:
    """The comments written into the -w file: failed where the backend got no token, never "token added"."""
    md, flows = proxy
    _post(md, f"{backend.url}/inspect/saved", LARGE)
    _post(md, f"{backend.url}/upload/saved", LARGE)
    md.wait_for(r"/upload/saved \[upload\]")
    from mitmproxy import io

    md.stop()
    with flows.open("rb") as f:
        saved = {fl.request.path: fl for fl in io.FlowReader(f).stream()}
    failed = saved["/inspect/saved"]
    assert failed.request.host == "127.0.0.1" and failed.request.port == backend.port  # not the sink's address
    assert failed.response.status_code == 500
    assert "failed (RequestBodyStreamed)" in failed.comment
    trace = failed.metadata["apim_mi"]["trace"]
    assert "stream_large_bodies" in json.dumps(trace)
    ok = saved["/upload/saved"]
    assert "token added to Authorization" in ok.comment
    assert b"Bearer [token redacted]" in ok.request.headers.get("Authorization", "").encode()
    for path in ("/stripped/1", "/late-stream/1"):  # sent by the tests above, through the same proxy
        assert saved[path].marked == ":x:" and "token added" not in saved[path].comment


# -- the pure parts ------------------------------------------------------------------------------------------------


def _request(headers: dict[str, str], http_version: str = "HTTP/1.1", stream: bool = False) -> Any:
    from mitmproxy import http

    req = http.Request.make("POST", "http://example.test/upload", b"", headers)
    req.headers.pop("content-length", None)
    for name, text in headers.items():
        req.headers[name] = text
    req.http_version = http_version
    req.stream = stream
    return req


@pytest.mark.parametrize(
    ("headers", "version", "stream", "limit", "expected"),
    [
        ({"Content-Length": "5000"}, "HTTP/1.1", True, 1024, "yes"),  # mitmproxy set stream before the hook
        ({"Content-Length": "500"}, "HTTP/1.1", False, 1024, "no"),
        ({"Content-Length": "5000"}, "HTTP/1.1", False, None, "no"),  # streaming off
        ({"Transfer-Encoding": "chunked"}, "HTTP/1.1", False, 1024, "maybe"),
        ({}, "HTTP/1.1", False, 1024, "no"),  # HTTP/1 without a length has no body
        ({}, "HTTP/2.0", False, 1024, "maybe"),  # HTTP/2 may send DATA frames without content-length
        ({"Content-Length": "nope"}, "HTTP/1.1", False, 1024, "maybe"),
        ({}, "HTTP/1.1", True, None, "yes"),  # another addon set flow.request.stream
    ],
)
def test_streaming_decision(
    headers: dict[str, str], version: str, stream: bool, limit: int | None, expected: str
) -> None:
    from apim_mi.uploads import streaming

    assert streaming(_request(headers, version, stream), limit).value == expected


def _policy(inbound: str, outbound: str = "") -> Any:
    from apim_mi.policy.loader import load_policy_text

    text = (
        f"<policies><inbound>{inbound}</inbound><backend><forward-request/></backend>"
        f"<outbound>{outbound}</outbound><on-error/></policies>"
    )
    return load_policy_text(text, source="t.xml")


@pytest.mark.parametrize(
    ("inbound", "outbound", "expected"),
    [
        ('<set-header name="a" exists-action="override"><value>b</value></set-header>', "", None),
        ("<set-body>x</set-body>", "", "'set-body' on line 1"),
        ("", "<set-body>x</set-body>", None),  # outbound set-body acts on the response
        ('<send-request mode="new" response-variable-name="r"><set-url>http://x.test/</set-url>'
         "<set-body>x</set-body></send-request>", "", None),  # a side request's own body
        ('<set-variable name="n" value="@(context.Request.Body.As&lt;string&gt;().Length)" />', "",
         "an expression of 'set-variable' reading context.Request.Body on line 1"),
        ('<set-variable name="n" value="@(context.Response?.Body == null)" />', "", None),
    ],
)
def test_request_body_need(inbound: str, outbound: str, expected: str | None) -> None:
    from apim_mi.uploads import request_body_need

    assert request_body_need(_policy(inbound, outbound)) == expected


def test_ignores_errors_only_when_every_mi_statement_does() -> None:
    from apim_mi.uploads import ignores_errors

    mi = '<authentication-managed-identity resource="https://x.test" ignore-error="{}" />'
    assert ignores_errors(_policy(mi.format("true")))
    assert not ignores_errors(_policy(mi.format("true") + mi.format("false")))
    assert not ignores_errors(_policy('<set-header name="a"><value>b</value></set-header>'))


# -- the requestheaders hook is offered only while a body may stream ------------------------------------------------

# An addon loaded before apim-mi that streams request bodies itself (no stream_large_bodies): apim-mi must still see
# its flows in requestheaders and run the policy there, before the headers leave.
_STREAMER = """\
class Streamer:
    def requestheaders(self, flow):
        if flow.request.path.startswith("/upload/streamed"):
            flow.request.stream = True


addons = [Streamer()]
"""


def test_streaming_started_by_an_earlier_addon_gets_the_token(
    tmp_path: Path, emulator: Any, backend: Any
) -> None:
    (tmp_path / "streamer.py").write_text(_STREAMER)
    rules = write_rules(tmp_path, f"""
        rules:
          - {{name: upload, match: {{host: "127.0.0.1:{backend.port}", path: /upload}}, resource: "{DEMO_AUDIENCE}"}}
    """)  # fmt: skip
    md = start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"],
        env=emulator.env("imds"), confdir=tmp_path / "confdir",
        command=(MITMDUMP, "-s", str(tmp_path / "streamer.py"), "-s", str(ROOT / "addon" / "mi.py")),
    )  # fmt: skip
    try:
        status, body = _post(md, f"{backend.url}/upload/streamed-1", LARGE)
        assert status == 200, body
        assert body["claims"]["aud"] == DEMO_AUDIENCE and body["body_bytes"] == LARGE
        md.wait_for(r"POST http://127\.0\.0\.1:\d+/upload/streamed-1 \[upload\] .*token added to Authorization")
    finally:
        md.stop()


class _EarlierHook:
    """A third-party addon with a requestheaders hook of its own (its module is not mitmproxy's)."""

    def requestheaders(self, flow: Any) -> None:
        return None


def test_the_requestheaders_hook_is_offered_only_while_a_body_may_stream(tmp_path: Path) -> None:
    from apim_mi.addon import ApimMi
    from mitmproxy.test import taddons

    (tmp_path / "rules.yaml").write_text("rules: []\n")
    addon = ApimMi()
    with taddons.context(addon) as tctx:
        tctx.options.add_option("stream_large_bodies", str | None, None, "mitmproxy's proxyserver option")
        tctx.configure(addon, mi_rules=str(tmp_path / "rules.yaml"))
        assert getattr(addon, "requestheaders", None) is None  # mitmproxy's lookup finds nothing to call
        tctx.configure(addon, stream_large_bodies="1k")
        assert addon.requestheaders == addon._on_requestheaders
        tctx.configure(addon, stream_large_bodies=None)
        assert getattr(addon, "requestheaders", None) is None
    late = ApimMi()
    with taddons.context(_EarlierHook(), late) as tctx:
        tctx.configure(late, mi_rules=str(tmp_path / "rules.yaml"))
        assert late.requestheaders == late._on_requestheaders
