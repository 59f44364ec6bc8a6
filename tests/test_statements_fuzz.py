"""Property: any small policy built from the supported statements (with failing expressions, bad codes, bad URLs,
failing tokens and side requests) runs through inbound and outbound without an exception escaping the engine; the
run either answers (run.response with a valid status) or lets the request continue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from apim_mi.errors import LoadError
from apim_mi.policy import engine
from apim_mi.policy.context import Body, Context, Headers, Request, Response, Url
from apim_mi.policy.gateway import GatewayState
from apim_mi.policy.loader import DEFAULT_GLOBAL, compose, load_policy_text
from apim_mi.trace import Trace
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_statements import FakeSender, FakeTokens

EXPRESSIONS = [
    '@(context.Request.Method)', '@(((string)null).Length)', '@(context.Variables["nope"])',
    '@(context.Variables.GetValueOrDefault<string>("v", "d"))', '@(1 + 2)', '@(true)', '@(null)',
    '@(context.Request.Headers.GetValueOrDefault("X-A", ""))', '@(context.Response.StatusCode)',
    '@(context.LastError.Reason)', '@(new JObject(new JProperty("a", 1)).ToString())', '@(int.Parse("x"))',
]  # fmt: skip
LITERALS = ["plain", "", "GET", "200", "https://side.test/x", "not a url", "true", "{\"a\": 1}", "/p/{id}", "a b"]
value = st.sampled_from(EXPRESSIONS + LITERALS)
name = st.sampled_from(["X-A", "Authorization", "Content-Type", "v", "r", "id"])


def attr(v: str) -> str:
    return v.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def text(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;")


@st.composite
def statement(draw: Any, section: str, depth: int = 0) -> str:
    common = ["set-header", "set-variable", "set-status", "return-response", "send-request", "trace", "choose",
              "cache-lookup-value", "cache-store-value", "cache-remove-value", "retry", "limit-concurrency",
              "send-one-way-request", "log-to-eventhub"]  # fmt: skip
    if section == "inbound":
        common += ["set-body", "set-method", "check-header", "set-query-parameter", "rewrite-uri",
                   "set-backend-service", "authentication-basic", "validate-jwt", "authentication-managed-identity",
                   "mock-response", "rate-limit-by-key", "quota-by-key", "cache-lookup", "wait", "proxy"]  # fmt: skip
    elif section == "outbound":
        common += ["set-body", "cache-store"]
    nesting = ("choose", "retry", "limit-concurrency", "wait")
    kind = draw(st.sampled_from(common if depth < 2 else [c for c in common if c not in nesting]))
    v, n = draw(value), draw(name)
    match kind:
        case "set-header":
            action = draw(st.sampled_from(["override", "skip", "append", "delete"]))
            return f'<set-header name="{n}" exists-action="{action}"><value>{text(v)}</value></set-header>'
        case "set-variable":
            return f'<set-variable name="{n}" value="{attr(v)}" />'
        case "set-status":
            return f'<set-status code="{draw(st.integers(-5, 1200))}" reason="{attr(v)}" />'
        case "set-body":
            return f"<set-body>{text(v)}</set-body>"
        case "set-method":
            return f"<set-method>{text(v)}</set-method>"
        case "return-response":
            var = ' response-variable-name="r"' if draw(st.booleans()) else ""
            return (f'<return-response{var}><set-status code="{draw(st.integers(100, 599))}" />'
                    f'<set-header name="{n}" exists-action="override"><value>{text(v)}</value></set-header>'
                    "</return-response>")  # fmt: skip
        case "send-request":
            ignore = draw(st.sampled_from(["true", "false"]))
            mode = draw(st.sampled_from(["new", "copy"]))
            mi = '<authentication-managed-identity resource="r" />' if draw(st.booleans()) else ""
            return (f'<send-request mode="{mode}" response-variable-name="r" timeout="{draw(st.integers(1, 90))}" '
                    f'ignore-error="{ignore}"><set-url>{text(draw(value))}</set-url><set-method>GET</set-method>'
                    f"{mi}</send-request>")  # fmt: skip
        case "trace":
            return f'<trace source="fuzz"><message>{text(v)}</message></trace>'
        case "choose":
            inner = draw(st.lists(statement(section, depth + 1), max_size=2))
            other = draw(st.lists(statement(section, depth + 1), max_size=2))
            return (f'<choose><when condition="{attr(draw(value))}">{"".join(inner)}</when>'
                    f"<otherwise>{''.join(other)}</otherwise></choose>")  # fmt: skip
        case "cache-lookup-value":
            default = f' default-value="{attr(draw(value))}"' if draw(st.booleans()) else ""
            return f'<cache-lookup-value key="{attr(v)}" variable-name="{n}"{default} />'
        case "cache-store-value":
            return f'<cache-store-value key="{attr(v)}" value="{attr(draw(value))}" duration="{attr(draw(value))}" />'
        case "cache-remove-value":
            return f'<cache-remove-value key="{attr(v)}" />'
        case "cache-lookup":
            return ('<cache-lookup vary-by-developer="false" vary-by-developer-groups="false">'
                    f"<vary-by-header>{text(n)}</vary-by-header></cache-lookup>")  # fmt: skip
        case "cache-store":
            return f'<cache-store duration="{draw(st.integers(0, 5))}" />'
        case "rate-limit-by-key" | "quota-by-key":
            cond = f' increment-condition="{attr(draw(value))}"' if draw(st.booleans()) else ""
            return (f'<{kind} calls="{draw(st.integers(0, 3))}" renewal-period="{attr(draw(value))}" '
                    f'counter-key="{attr(v)}"{cond} />')  # fmt: skip
        case "retry" | "limit-concurrency" | "wait":
            inner = "".join(draw(st.lists(statement(section, depth + 1), max_size=2)))
            count, fast = draw(st.integers(0, 2)), draw(st.sampled_from(["true", "false"]))
            opening = {"retry": f'<retry condition="{attr(v)}" count="{count}" interval="1" delta="{count}" '
                                f'first-fast-retry="{fast}">',
                       "limit-concurrency": f'<limit-concurrency key="{attr(v)}" max-count="{count}">',
                       "wait": f'<wait for="{"all" if fast == "true" else "any"}">'}[kind]  # fmt: skip
            return f"{opening}{inner}</{kind}>"
        case "send-one-way-request":
            return (f'<send-one-way-request mode="{draw(st.sampled_from(["new", "copy"]))}">'
                    f"<set-url>{text(v)}</set-url></send-one-way-request>")  # fmt: skip
        case "log-to-eventhub":
            return f'<log-to-eventhub logger-id="fuzz">{text(v)}</log-to-eventhub>'
        case "proxy":
            return f'<proxy url="{attr(v)}" />'
        case "check-header":
            return (f'<check-header name="{n}" failed-check-httpcode="{draw(st.integers(100, 599))}" '
                    f'failed-check-error-message="{attr(v)}" ignore-case="true"><value>{text(draw(value))}</value>'
                    "</check-header>")  # fmt: skip
        case "set-query-parameter":
            action = draw(st.sampled_from(["override", "skip", "append", "delete"]))
            return (f'<set-query-parameter name="{n}" exists-action="{action}"><value>{text(v)}</value>'
                    "</set-query-parameter>")  # fmt: skip
        case "rewrite-uri":
            return f'<rewrite-uri template="{attr(v)}" copy-unmatched-params="{draw(st.sampled_from(["true", "false"]))}" />'  # noqa: E501
        case "set-backend-service":
            return f'<set-backend-service base-url="{attr(v)}" />'
        case "authentication-basic":
            return f'<authentication-basic username="{attr(v)}" password="{attr(draw(value))}" />'
        case "validate-jwt":
            return (f'<validate-jwt header-name="{n}"><issuer-signing-keys><key>{text(v)}</key>'
                    f"</issuer-signing-keys><audiences><audience>{text(draw(value))}</audience></audiences>"
                    "</validate-jwt>")  # fmt: skip
        case "authentication-managed-identity":
            out = ' output-token-variable-name="v"' if draw(st.booleans()) else ""
            return f'<authentication-managed-identity resource="{attr(v)}"{out} ignore-error="{draw(st.sampled_from(["true", "false"]))}" />'  # noqa: E501
        case _:
            return f'<mock-response status-code="{draw(st.integers(100, 599))}" content-type="application/json" />'


@st.composite
def policy_xml(draw: Any) -> str:
    inbound = "".join(draw(st.lists(statement("inbound"), max_size=4)))
    outbound = "".join(draw(st.lists(statement("outbound"), max_size=3)))
    on_error = "".join(draw(st.lists(statement("on-error"), max_size=3)))
    backend = draw(st.sampled_from(["<forward-request />", '<retry condition="@(context.Response.StatusCode >= 400)" '
                                    'count="1" interval="0"><forward-request /></retry>']))  # fmt: skip
    return (f"<policies><inbound>{inbound}</inbound><backend>{backend}</backend>"
            f"<outbound>{outbound}</outbound><on-error>{on_error}</on-error></policies>")  # fmt: skip


async def _no_sleep(seconds: float) -> None:
    """retry intervals pass at once."""


def sender(mode: str) -> FakeSender:
    return {"ok": FakeSender(), "403": FakeSender(status=403), "timeout": FakeSender(exc=TimeoutError()),
            "refused": FakeSender(exc=OSError("refused"))}[mode]  # fmt: skip


# Random validate-jwt policies use short HMAC keys on purpose; PyJWT warns about each.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(policy_xml(), st.sampled_from(["ok", "403", "timeout", "refused"]), st.booleans())
def test_engine_never_raises(xml: str, side: str, token_fails: bool) -> None:
    try:
        policy = compose(DEFAULT_GLOBAL, load_policy_text(xml, source="fuzz.xml"))
    except LoadError:
        assume(False)
        return
    request = Request("POST", Url.parse("https://api.test/p/1?id=3"),
                      Headers([("Host", "api.test"), ("X-A", "1")]), Body(b'{"a": 1}'))  # fmt: skip
    services = engine.Services(FakeTokens(fail=token_fails), "emulator", send=sender(side),  # type: ignore[arg-type]
                               state=GatewayState(sleep=_no_sleep))  # fmt: skip
    run = engine.PolicyRun(policy, Context(request=request), Trace("t"), services)

    async def go() -> None:
        await engine.run_inbound(run)
        if run.response is None:
            run.context.response = Response(200, "OK", Headers([("Content-Type", "text/plain")]), Body(b"backend"))
            await engine.run_outbound(run)
        engine.finish(run)
        await asyncio.gather(*run.services.state.tasks, return_exceptions=True)

    asyncio.run(go())
    final = run.response or run.context.response
    assert final is not None and isinstance(final.status_code, int)
    if run.response is not None:
        assert 100 <= run.response.status_code <= 999
    if run.error is not None:
        assert run.response is not None and run.context.last_error is not None
