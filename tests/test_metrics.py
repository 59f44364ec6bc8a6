"""Metrics and health (``mi_metrics``): a real mitmdump scraped with prometheus-client's own text parser while
requests flow through it; ``/readyz`` turns ready only once the rules are loaded and the prefetched tokens cached."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apim_mi.metrics import Metrics, MetricsServer, Readiness, metric_name, parse_listen
from prometheus_client.parser import text_string_to_metric_families
from proxy import Mitmdump, curl, start_mitmdump

MISSING = "https://missing.contoso.test"  # an expression's resource: not prefetched, unknown to the tenant
AUD = "https://orders.contoso.test"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


# -- the Metrics interface ------------------------------------------------------------------------------------------


def test_custom_metrics_with_dimensions_parse() -> None:
    m = Metrics()
    m.counter("Orders placed", {"api-name": "orders", "region": "westeurope"}, 2)
    m.counter("Orders placed", {"api-name": "orders", "region": "westeurope"})
    m.counter("Orders placed", {"api-name": "billing", "unknown": "x"})  # missing region -> "", extra dropped
    m.histogram("llm.prompt_tokens", 120, {"deployment": "gpt-4o"})
    m.histogram("llm.prompt_tokens", 30, {"deployment": "gpt-4o"})
    parsed = samples(m.exposition().decode())
    assert value(parsed, "Orders_placed_total", api_name="orders", region="westeurope") == 3
    assert value(parsed, "Orders_placed_total", api_name="billing", region="") == 1
    assert value(parsed, "llm_prompt_tokens_count", deployment="gpt-4o") == 2
    assert value(parsed, "llm_prompt_tokens_sum", deployment="gpt-4o") == 150
    with pytest.raises(ValueError, match="already a counter"):
        m.histogram("Orders placed", 1)
    assert metric_name("9 lives") == "_9_lives"


def test_flow_counters_and_reloads() -> None:
    m = Metrics()
    for event in ("matched", "matched", "injected", "failed", "refused"):
        m.flow(event, "orders")
    m.reloaded(True)
    m.reloaded(False)
    m.policy_error("authentication-managed-identity")
    parsed = samples(m.exposition().decode())
    assert value(parsed, "apim_mi_requests_matched_total", rule="orders") == 2
    assert value(parsed, "apim_mi_requests_failed_closed_total", rule="orders") == 1
    assert value(parsed, "apim_mi_requests_refused_total", rule="orders") == 1
    assert value(parsed, "apim_mi_rules_reloads_total", result="failed") == 1
    assert value(parsed, "apim_mi_policy_errors_total", policy="authentication-managed-identity") == 1


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ],
)
def test_parse_listen(spec: str, expected: tuple[str, int]) -> None:
    assert parse_listen(spec) == expected


@pytest.mark.parametrize("spec", ["9464", "host:port", "127.0.0.1:99999", "metrics.local:9464"])
def test_parse_listen_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="mi_metrics"):
        parse_listen(spec)


async def test_clients_outside_the_allowed_networks_get_403() -> None:
    server = MetricsServer(Metrics(), lambda: Readiness(True, {}), allowed=lambda peer: False)
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            for path in ("/metrics", "/healthz", "/readyz"):
                assert (await client.get(f"http://127.0.0.1:{port}{path}")).status_code == 403
    finally:
        await server.stop()


# -- through a real mitmdump ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, emulator: Any, backend: Any) -> Iterator[dict[str, Any]]:
    """mitmdump with mi_metrics and mi_prefetch while the emulator answers slowly: /readyz is polled from the
    moment the endpoint answers until it turns ready."""
    tmp = tmp_path_factory.mktemp("metrics")
    rules = tmp / "rules.yaml"
    rules.write_text(
        f"rules:\n"
        f"  - name: orders\n    match: {{host: '127.0.0.1:{backend.port}', path: /api}}\n    resource: {AUD}\n"
        f"  - name: missing resource\n    match: {{host: '127.0.0.1:{backend.port}', path: /other}}\n"
        f'    policy: \'<policies><inbound><authentication-managed-identity resource="@(&quot;{MISSING}&quot;)" />'
        "</inbound></policies>'\n"
    )
    emulator.reset()
    emulator.configure(latency_ms=1500, resources=[AUD])  # MISSING gets Entra's AADSTS500011
    md = start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity", "--set", "mi_prefetch=true",
         "--set", "mi_metrics=127.0.0.1:0"],
        env=emulator.env("imds"), confdir=tmp / "conf",
    )  # fmt: skip
    try:
        port = int(md.wait_for(r"metrics and health at http://127\.0\.0\.1:(\d+)").group(1))
        base = f"http://127.0.0.1:{port}"
        readyz = []
        deadline = time.monotonic() + 15
        with httpx.Client(trust_env=False) as client:
            while time.monotonic() < deadline:
                r = client.get(f"{base}/readyz")
                readyz.append((r.status_code, r.json()))
                if r.status_code == 200:
                    break
                time.sleep(0.1)
        emulator.configure(latency_ms=0)
        yield {"md": md, "base": base, "readyz": readyz, "rules": rules, "backend": backend, "emulator": emulator}
    finally:
        emulator.reset()
        md.stop()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{base}/metrics", trust_env=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def test_readyz_turns_ready_only_once_prefetched_tokens_are_cached(scraped: dict[str, Any]) -> None:
    readyz = scraped["readyz"]
    assert readyz[-1][0] == 200 and readyz[-1][1]["status"] == "ready", readyz[-3:]
    assert readyz[-1][1]["rules"] == 2
    assert readyz[0][0] == 503, readyz[:3]
    assert readyz[0][1]["reason"] in ("starting", "tokens not cached yet")
    waiting = [body for code, body in readyz if code == 503 and body["reason"] == "tokens not cached yet"]
    assert waiting and f"system-assigned {AUD}" in waiting[0]["missing"]
    assert httpx.get(f"{scraped['base']}/healthz", trust_env=False).json() == {"status": "alive"}


def test_counters_move_as_requests_flow(scraped: dict[str, Any]) -> None:
    base, backend, md = scraped["base"], scraped["backend"], scraped["md"]
    before = scrape(base)
    for _ in range(3):
        assert curl("-x", md.url, f"http://127.0.0.1:{backend.port}/api/x")[0] == 200
    assert curl("-x", md.url, f"http://127.0.0.1:{backend.port}/other")[0] == 500
    after = scrape(base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("apim_mi_requests_matched_total", rule="orders") == 3
    assert moved("apim_mi_requests_injected_total", rule="orders") == 3
    assert moved("apim_mi_requests_matched_total", rule="missing resource") == 1
    assert moved("apim_mi_requests_failed_closed_total", rule="missing resource") == 1
    assert moved("apim_mi_requests_injected_total", rule="missing resource") == 0
    assert moved("apim_mi_policy_errors_total", policy="authentication-managed-identity") == 1
    system = {"source": "managed-identity", "identity": "system-assigned", "resource": AUD}
    assert value(after, "apim_mi_token_acquisitions_total", **system, result="ok") == 1  # prefetched once, cached
    assert value(after, "apim_mi_token_acquisition_seconds_count", **system) == 1
    assert value(after, "apim_mi_token_acquisition_seconds_sum", **system) >= 1.4  # the emulator's 1.5 s latency
    assert value(after, "apim_mi_token_expires_in_seconds", **system) > 3000
    missing = {"source": "managed-identity", "identity": "system-assigned", "resource": MISSING}
    assert value(after, "apim_mi_token_acquisitions_total", **missing, result="failed") == 1


def test_reloads_are_counted(scraped: dict[str, Any]) -> None:
    rules: Path = scraped["rules"]
    good = rules.read_text()
    before = scrape(scraped["base"])
    try:
        rules.write_text(good + "  - name: broken\n    match: {host: x}\n    resourc: y\n")
        scraped["md"].wait_for(r"keeping the previous rules", timeout=10)
    finally:
        time.sleep(0.05)
        rules.write_text(good)
    scraped["md"].wait_for(r"rules reloaded \(rules.yaml changed\)", timeout=10)
    after = scrape(scraped["base"])
    assert (
        value(after, "apim_mi_rules_reloads_total", result="failed")
        - value(before, "apim_mi_rules_reloads_total", result="failed")
        == 1
    )
    assert value(after, "apim_mi_rules_reloads_total", result="ok") >= 1


def test_metrics_off_by_default(tmp_path: Path, emu: Any) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    md: Mitmdump = start_mitmdump(["--set", f"mi_rules={rules}"], env=emu.env("imds"), confdir=tmp_path / "c")
    try:
        assert "metrics and health" not in md.text()
    finally:
        md.stop()


def test_bad_mi_metrics_is_one_clear_error(tmp_path: Path) -> None:
    from proxy import run_mitmdump_expecting_exit

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    code, out = run_mitmdump_expecting_exit(
        ["--set", f"mi_rules={rules}", "--set", "mi_metrics=9464"], confdir=tmp_path / "c"
    )
    assert code == 1 and "mi_metrics: '9464' is not host:port" in out and "Traceback" not in out


async def test_refused_clients_are_counted_per_rule(tmp_path: Path) -> None:
    """A client outside loopback and mi_allow_clients (a flow object from a documentation address; nothing is
    sent anywhere) is refused with 403 and counted."""
    from apim_mi.addon import ApimMi
    from mitmproxy.test import taddons, tflow

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: api\n    match: {host: api.contoso.test}\n    resource: https://x.test\n")
    addon = ApimMi()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mi_rules=str(rules), mi_metrics="127.0.0.1:0", mi_allow_clients=["10.0.0.0/8"])
        for peer in ("203.0.113.5", "198.51.100.7"):
            f = tflow.tflow()
            f.client_conn.peername = (peer, 50000)
            f.request.host, f.request.port, f.request.scheme = "api.contoso.test", 443, "https"
            if (pending := addon.request(f)) is not None:  # sync unless there is async work
                await pending
            assert f.response is not None and f.response.status_code == 403
    parsed = samples(addon.metrics.exposition().decode())
    assert value(parsed, "apim_mi_requests_matched_total", rule="api") == 2
    assert value(parsed, "apim_mi_requests_refused_total", rule="api") == 2
    assert value(parsed, "apim_mi_requests_injected_total", rule="api") == 0


def test_no_string_work_per_flow_when_off() -> None:
    """With mi_metrics off the addon holds no Metrics, so its counting is the mi.status dict increment alone."""
    from apim_mi.addon import ApimMi

    addon = ApimMi()
    assert addon.metrics is None
    addon._count("matched", "r")
    assert addon.counters["matched"] == 1


def test_apim_mi_healthcheck(scraped: dict[str, Any]) -> None:
    """The container HEALTHCHECK: the URL from APIM_MI_SET_MI_METRICS, exit 0 when healthy, 1 when not."""
    import subprocess
    import sys

    from proxy import clean_env

    apim_mi = str(Path(sys.executable).parent / "apim-mi")
    port = scraped["base"].rsplit(":", 1)[1]

    def run(*args: str, metrics: str) -> subprocess.CompletedProcess[str]:
        env = clean_env({"APIM_MI_SET_MI_METRICS": metrics})
        return subprocess.run([apim_mi, "healthcheck", *args], env=env, capture_output=True, text=True, timeout=30)

    ok = run(metrics=f"0.0.0.0:{port}")
    assert ok.returncode == 0 and '200 {"status": "alive"}' in ok.stdout
    assert run("--ready", metrics=f"0.0.0.0:{port}").returncode == 0
    assert run(metrics="127.0.0.1:9").returncode == 1
    missing = run(metrics="")
    assert missing.returncode == 1 and "APIM_MI_SET_MI_METRICS is not set" in missing.stderr
