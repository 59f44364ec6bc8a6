"""No-leak properties (hypothesis): for random rule sets and random requests, the addon's real hooks add the rule's
header exactly when a rule matches (first match in file order, checked against an independent reference matcher),
never touch a request that matches no rule, never send a token over plain http:// to a remote host unless the rule
allows it, and no log record, flow comment, trace or saved flow ever contains a token.

Tokens come from the real azure-identity ManagedIdentityCredential against the local emulator (IMDS protocol).
``APIM_MI_LONG=1`` runs 2 000 examples instead of 60.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import translate
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from apim_mi.addon import ApimMi
from apim_mi.tokens import TokenProvider, azure_credential_factory
from conftest import DEMO_AUDIENCE
from emulator_helpers import use_emulator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mitmproxy import io as mitmio
from mitmproxy.test import taddons, tflow, tutils

EXAMPLES = 2_000 if os.environ.get("APIM_MI_LONG") == "1" else 60
RESOURCES = (DEMO_AUDIENCE, "https://management.azure.com/", "https://vault.azure.net")
HOSTS = ("*", "api.test", "*.api.test", "other.test", "api.test:8443", "*.x.api.test", "[::1]")
PATHS = ("/", "/a", "/a/", "/a/*", "/a/b", "/*/b", "/a?", "/a*")
REQUEST_HOSTS = ("api.test", "x.api.test", "y.x.api.test", "other.test", "nomatch.test", "::1")
REQUEST_PATHS = ("/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/c/b", "/a1", "/b")


@dataclass(frozen=True)
class RuleSpec:
    host: str
    path: str
    methods: tuple[str, ...]
    scheme: str | None
    resource: str
    header: str | None
    allow_http: bool


@dataclass(frozen=True)
class RequestSpec:
    scheme: str
    host: str
    port: int
    path: str
    method: str
    client_auth: bool


rule_specs = st.builds(
    RuleSpec,
    host=st.sampled_from(HOSTS),
    path=st.sampled_from(PATHS),
    methods=st.sampled_from(((), ("GET",), ("POST", "DELETE"))),
    scheme=st.sampled_from((None, "http", "https")),
    resource=st.sampled_from(RESOURCES),
    header=st.sampled_from((None, "X-Token")),
    allow_http=st.booleans(),
)
request_specs = st.builds(
    RequestSpec,
    scheme=st.sampled_from(("http", "https")),
    host=st.sampled_from(REQUEST_HOSTS),
    port=st.sampled_from((80, 443, 8443)),
    path=st.sampled_from(REQUEST_PATHS),
    method=st.sampled_from(("GET", "POST", "DELETE", "PUT")),
    client_auth=st.booleans(),
)


def reference_match(rules: list[RuleSpec], req: RequestSpec) -> RuleSpec | None:
    """The documented semantics, written independently of the indexed matcher: first rule in file order whose
    host (exact, ``*``, ``*.suffix`` below the apex; optional port), scheme, methods and path (glob where ``*``
    crosses ``/``, else a prefix on segment boundaries) all match."""
    for rule in rules:
        spec = rule.host.strip("[]") if rule.host.startswith("[") else rule.host
        host, _, port = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
        if port and int(port) != req.port:
            continue
        if not (host == "*" or host == req.host or (host.startswith("*.") and req.host.endswith(host[1:]))):
            continue
        if rule.scheme not in (None, req.scheme) or (rule.methods and req.method not in rule.methods):
            continue
        if any(c in rule.path for c in "*?"):
            if not re.match(translate(rule.path), req.path):
                continue
        elif not (rule.path == "/" or req.path == rule.path or req.path.startswith(rule.path.rstrip("/") + "/")):
            continue
        return rule
    return None


def rules_yaml(rules: list[RuleSpec]) -> str:
    out = []
    for i, r in enumerate(rules):
        match: dict[str, Any] = {"host": r.host, "path": r.path}
        if r.methods:
            match["methods"] = list(r.methods)
        if r.scheme:
            match["scheme"] = r.scheme
        rule: dict[str, Any] = {"name": f"r{i}", "match": match, "resource": r.resource, "allow_http": r.allow_http}
        if r.header:
            rule |= {"header": r.header, "template": "{token}"}
        out.append(rule)
    return yaml.safe_dump({"rules": out}, sort_keys=False)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def harness(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    emulator.reset()  # the shared emulator as configured by default: an earlier test may have narrowed its resources
    mp = pytest.MonkeyPatch()
    use_emulator(mp, emulator)
    loop = asyncio.new_event_loop()
    records = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)  # every record of every library, azure-identity's included
    tokens: TokenProvider | None = None

    async def make_provider() -> TokenProvider:
        return TokenProvider(azure_credential_factory(5.0), timeout=5.0, refresh_before=60.0)

    try:
        tokens = loop.run_until_complete(make_provider())
        yield {"loop": loop, "records": records, "tokens": tokens, "dir": tmp_path_factory.mktemp("no-leak")}
    finally:
        if tokens is not None:
            loop.run_until_complete(tokens.close())
        root.removeHandler(records)
        root.setLevel(level)
        loop.close()
        mp.undo()


async def _through_addon(addon: ApimMi, req: RequestSpec) -> tuple[Any, dict[str, str], dict[str, str]]:
    """One request through the addon's hooks: the flow, its headers before, and the headers as they were sent."""
    host_header = f"[{req.host}]:{req.port}" if ":" in req.host else f"{req.host}:{req.port}"
    headers = [(b"host", host_header.encode()), (b"accept", b"*/*")]
    if req.client_auth:
        headers.append((b"authorization", b"Basic Y2xpZW50OmNsaWVudA=="))
    flow = tflow.tflow(req=tutils.treq(host=req.host, port=req.port, path=req.path.encode(), method=req.method.encode(),
                                       headers=tuple(headers)))  # fmt: skip
    flow.request.scheme = req.scheme
    before = {k.lower(): v for k, v in flow.request.headers.items(multi=True)}
    if (pending := addon.request(flow)) is not None:  # sync unless there is async work
        await pending
    sent = {k.lower(): v for k, v in flow.request.headers.items(multi=True)}
    if flow.response is None:
        flow.response = tutils.tresp()
        streamed = addon.responseheaders(flow)  # a coroutine only when the answer streams (mitmproxy awaits it)
        if streamed is not None:
            await streamed
    if (pending := addon.response(flow)) is not None:  # sync unless there is async work
        await pending
    return flow, before, sent


async def _check_requests(
    path: Path, tokens: TokenProvider, rules: list[RuleSpec], requests: list[RequestSpec]
) -> tuple[list[Any], set[str]]:
    """Each request through a fresh addon on ``path`` (inside the running loop, which mitmproxy's test master and
    log handler then share), checked against ``reference_match``; returns the flows and the tokens injected."""
    addon = ApimMi()
    seen_tokens: set[str] = set()
    flows = []
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mi_rules=str(path), mi_credential="managed-identity")
        assert not addon._startup_error
        addon.tokens = tokens
        addon._ready = asyncio.get_running_loop().create_future()
        addon._ready.set_result(None)
        for req in requests:
            expected = reference_match(rules, req)
            flow, before, sent = await _through_addon(addon, req)
            flows.append(flow)
            if expected is None:
                assert flow.response.status_code == 200 and "apim_mi" not in flow.metadata
                assert sent == before
                continue
            header = (expected.header or "Authorization").lower()
            if req.scheme == "http" and req.host != "::1" and not expected.allow_http:
                # fails closed: APIM's 500, nothing forwarded, nothing added
                assert flow.response.status_code == 500, flow.comment
                assert sent == before
                assert "token added" not in flow.comment  # nothing claims a token the backend never got
                continue
            value = sent[header]
            token = value if expected.header else value.removeprefix("Bearer ")
            assert value == (token if expected.header else f"Bearer {token}") and token.count(".") == 2
            assert jwt.decode(token, options={"verify_signature": False})["aud"] == expected.resource
            assert {k: v for k, v in sent.items() if k != header} == {k: v for k, v in before.items() if k != header}
            assert token not in flow.request.headers.get(header, "")  # redacted once the flow completed
            assert f"token added to {expected.header or 'Authorization'}" in flow.comment  # checked as it was sent
            seen_tokens.add(token)
    return flows, seen_tokens


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.lists(rule_specs, min_size=1, max_size=6), requests=st.lists(request_specs, min_size=1, max_size=4))
def test_header_added_exactly_when_a_rule_matches_and_no_token_leaks(
    harness: dict[str, Any], rules: list[RuleSpec], requests: list[RequestSpec]
) -> None:
    records, tokens = harness["records"], harness["tokens"]
    path: Path = harness["dir"] / "rules.yaml"
    path.write_text(rules_yaml(rules))
    flows, seen_tokens = harness["loop"].run_until_complete(_check_requests(path, tokens, rules, requests))
    saved = io.BytesIO()
    writer = mitmio.FlowWriter(saved)
    for flow in flows:
        writer.add(flow)
    blobs = [saved.getvalue().decode("latin-1"), "\n".join(records.lines)]
    blobs += [f"{f.comment}\n{json.dumps(f.metadata, default=str)}" for f in flows]
    for token in seen_tokens:
        assert all(token not in blob for blob in blobs)
        signature = token.rsplit(".", 1)[1]
        assert all(signature not in blob for blob in blobs)


_B64URL = st.text("ABCabc0123456789-_.", min_size=16, max_size=80)


@given(prefix=st.text("Bearer Tokn_ab", max_size=20), token=_B64URL | _B64URL.map(lambda t: t[:3] * 20),
       suffix=st.sampled_from(["", "x", ",extra"]), other=st.sampled_from(["", "eyJ0eXAiOiJKV1Qi.second.token"]))
@example(prefix="Bearer ab", token="ab" * 10, suffix="", other="")  # the token also starts inside the prefix
@settings(max_examples=300, deadline=None)
def test_a_header_value_is_redacted_as_the_general_scrub_redacts_it(prefix: str, token: str, suffix: str,
                                                                      other: str) -> None:  # fmt: skip
    """The redaction shortcut for ``<short prefix><token>`` (no search) gives what the general scrub gives, also for
    periodic tokens that occur in overlap, and the sent-token check finds a token wherever it is."""
    from apim_mi.addon import _not_carried, _scrubbed
    from apim_mi.policy.engine import Injection
    from apim_mi.trace import REDACTED, scrub

    secrets = {token, other} - {""}
    value = (prefix + token + suffix).encode()
    assert _scrubbed(value, secrets) == scrub(value.decode(), secrets).encode()
    assert token.encode() not in _scrubbed(value, secrets) and REDACTED.encode() in _scrubbed(value, secrets)
    fields = ((b"x-other", b"1"), (b"authorization", value))
    injected = [Injection("Authorization", "", "", {})]
    assert _not_carried(fields, injected, secrets) == []
    assert _not_carried(((b"authorization", prefix.encode()),), injected, {token}) == (
        [] if token in prefix else ["Authorization"])


@given(prefix=st.text("abBe r", max_size=15), token=st.text("ab", min_size=1, max_size=40) | _B64URL)
@example(prefix="ab", token="ab")  # a token short enough to fit inside the prefix
@example(prefix="Bearer aba", token="ab" * 10)  # a periodic token that also starts inside the prefix
@settings(max_examples=300, deadline=None)
def test_only_at_end_finds_every_earlier_occurrence(prefix: str, token: str) -> None:
    """The shortcut for aperiodic tokens (no search) answers what a search answers, for short and periodic tokens
    too."""
    from apim_mi.addon import _only_at_end

    value = (prefix + token).encode()
    assert _only_at_end(value, token.encode(), len(prefix.encode())) == (value.find(token.encode()) == len(prefix))


_SHAPES = ["Bearer {t}", "bearer {t}", "Bearer {t}{t}", "{t}", "Bearer x", "Bearer {t},x"]


@given(token=_B64URL | _B64URL.map(lambda t: t[:3] * 20) | st.sampled_from(["Bearer", "earer ", "B"]),
       other=st.sampled_from(["", "eyJ0eXAiOiJKV1Qi.second.token", "Bearer"]),
       values=st.lists(st.sampled_from(_SHAPES), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_redaction_of_a_flow_is_the_general_scrub_of_each_injected_field(token: str, other: str,
                                                                         values: list[str]) -> None:  # fmt: skip
    """The addon's redaction (with its "Bearer <token>" value redacted once per token when the token is the flow's
    only secret) leaves each injected header as the general scrub leaves it, other headers as they were, and the
    redacted value again on the next flow."""
    from types import SimpleNamespace

    from apim_mi.addon import ApimMi
    from apim_mi.policy.engine import Injection
    from apim_mi.trace import scrub
    from mitmproxy.test import tflow, tutils

    secrets = {token, other} - {""}
    fields = (*((b"Authorization", v.format(t=token).encode()) for v in values), (b"x-other", b"1"))
    addon = ApimMi()
    for _ in range(2):
        flow = tflow.tflow(req=tutils.treq(headers=fields))
        injected = [Injection("Authorization", "", "", {})]
        run = SimpleNamespace(injections=injected, trace=SimpleNamespace(secrets=secrets))
        addon._redact(flow, SimpleNamespace(redacted=False, run=run))  # type: ignore[arg-type]
        assert flow.request.data.headers.fields == tuple(
            (n, scrub(v.decode(), secrets).encode() if n == b"Authorization" else v) for n, v in fields)
