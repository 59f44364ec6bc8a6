"""mitmweb with the addon: its REST API (the "APIM trace" view, the mi.* commands) and a real headless Chromium that
opens a traced flow, shows the "APIM trace" view, and never a token. Saves docs/img/mitmweb-apim-trace.png."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import DEMO_AUDIENCE, ROOT
from proxy import clean_env

MITMWEB = str(Path(sys.executable).parent / "mitmweb")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "img" / "mitmweb-apim-trace.png"
PASSWORD = "apim-mi-test-password"
XSRF = {"Cookie": "_mitmproxy_xsrf=apim-mi", "X-XSRFToken": "apim-mi"}
# A list option takes one --set per value; the comment column shows apim-mi's one-line summary in the flow list.
COLUMNS = ("icon", "path", "method", "status", "time", "comment")
MI_ADDED = "Managed identity token is added to Authorization header."
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


@dataclass
class Mitmweb:
    proc: subprocess.Popen[str]
    proxy_port: int
    web_port: int
    output: list[str] = field(default_factory=list)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def api(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {PASSWORD}", **XSRF}
        return httpx.Client(base_url=self.web, headers=headers, trust_env=False, timeout=20)

    def command(self, name: str, *args: str) -> Any:
        with self.api() as api:
            r = api.post(f"/commands/{name}", json={"arguments": list(args)})
        r.raise_for_status()
        body = r.json()
        assert "error" not in body, body
        return body["value"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pump(proc: subprocess.Popen[str], out: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))


def start_mitmweb(args: list[str], *, env: dict[str, str], confdir: Path, timeout: float = 20.0) -> Mitmweb:
    """mitmweb on loopback with a password; the web port is chosen here (mitmweb reports ``--web-port 0`` as 0)."""
    for _attempt in range(3):
        web_port = _free_port()
        cmd = [
            MITMWEB, "--listen-host", "127.0.0.1", "--listen-port", "0", "--web-host", "127.0.0.1",
            "--web-port", str(web_port), "--set", "web_open_browser=false", "--set", f"web_password={PASSWORD}",
            "--set", f"confdir={confdir}", "-s", str(ROOT / "addon" / "mi.py"), *args,
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)  # fmt: skip
        out: list[str] = []
        threading.Thread(target=_pump, args=(proc, out), daemon=True).start()
        deadline = time.monotonic() + timeout
        proxy_port = None
        while time.monotonic() < deadline and proc.poll() is None:
            text = "\n".join(out)
            m = re.search(r"proxy listening at 127\.0\.0\.1:(\d+)", text)
            proxy_port = int(m.group(1)) if m else None
            if proxy_port and f"Web server listening at http://127.0.0.1:{web_port}/" in text and (
                "apim-mi: tokens are injected only for" in text
            ):
                return Mitmweb(proc, proxy_port, web_port, out)
            time.sleep(0.05)
        proc.kill()
        proc.wait(5)
        if "Address already in use" not in "\n".join(out):
            raise AssertionError("mitmweb did not start:\n" + "\n".join(out))
    raise AssertionError("mitmweb: no free web port after 3 attempts")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, emulator: Any, backend: Any) -> Iterator[tuple[Mitmweb, Any]]:
    """One mitmweb for the module, with one traced request through it (and the flow's id)."""
    emulator.reset()
    d = tmp_path_factory.mktemp("mitmweb")
    rules = d / "rules.yaml"
    rules.write_text(textwrap.dedent(f"""
        rules:
          - name: orders api
            match: {{host: "127.0.0.1:{backend.port}", path: /api}}
            resource: "{DEMO_AUDIENCE}"
    """))
    mw = start_mitmweb(
        ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity",
         *[a for c in COLUMNS for a in ("--set", f"web_columns={c}")]],
        env=emulator.env("imds"), confdir=d / "confdir",
    )  # fmt: skip
    try:
        with httpx.Client(proxy=mw.proxy, trust_env=False, timeout=20) as client:
            r = client.get(f"{backend.url}/api/orders/42")
        assert r.status_code == 200, r.text
        yield mw, emulator
    finally:
        mw.proc.terminate()
        try:
            mw.proc.wait(10)
        except subprocess.TimeoutExpired:
            mw.proc.kill()


def _flow_id(mw: Mitmweb) -> str:
    with mw.api() as api:
        flows = api.get("/flows.json").json()
    ids = [f["id"] for f in flows if f["request"]["path"] == "/api/orders/42" and f.get("response")]
    assert len(ids) == 1, flows
    return ids[0]


def _widen_details(page: Any, x: int) -> None:
    """Drags the splitter between the flow list and the flow details to ``x`` (so the trace lines fit)."""
    box = page.locator(".splitter-x > div").first.bounding_box()
    if box is None:
        return
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()


def _tokens(emu: Any) -> list[str]:
    tokens = emu.stats()["issued_tokens"]
    assert tokens, "the emulator issued no token: a scan for tokens would prove nothing"
    return list(tokens) + [t.rsplit(".", 1)[-1] for t in tokens]


def _leaks(emu: Any, text: str) -> int:
    return sum(text.count(t) for t in _tokens(emu))


def test_rest_content_view_by_name_and_comment(web: tuple[Mitmweb, Any]) -> None:
    mw, emu = web
    flow_id = _flow_id(mw)
    with mw.api() as api:
        assert "apim trace" in [v.lower() for v in api.get("/state.json").json()["contentViews"]]
        auto = api.get(f"/flows/{flow_id}/response/content/auto.json").json()
        named = api.get(f"/flows/{flow_id}/response/content/{quote('APIM trace')}.json").json()
        flows = api.get("/flows.json").text
        dump = api.get("/flows/dump").content
    assert auto["view_name"] == "APIM trace" and MI_ADDED in auto["text"]
    assert named["view_name"] == "APIM trace" and named["text"] == auto["text"]  # the name works as a URL segment
    assert "apim-mi [orders api] system-assigned aud=" + DEMO_AUDIENCE in flows  # flow.comment, in mitmweb's list
    assert _leaks(emu, auto["text"] + flows) == 0 and _leaks(emu, dump.decode("latin-1")) == 0


def test_mi_commands_through_the_rest_api(web: tuple[Mitmweb, Any]) -> None:
    import json

    mw, emu = web
    status = json.loads(mw.command("mi.status"))
    (cached,) = status["tokens"]
    assert cached["resource"] == DEMO_AUDIENCE and cached["aud"] == DEMO_AUDIENCE
    assert cached["source"] == "managed-identity" and cached["identity"] == "system-assigned"
    assert cached["hits"] >= 0 and cached["expires_in_s"] > 0 and cached["expires_on"].endswith("Z")
    assert status["counters"]["injected"] >= 1 and status["counters"]["matched"] >= 1
    assert _leaks(emu, json.dumps(status)) == 0
    assert mw.command("mi.flush") == "flushed 1 token(s)"
    assert json.loads(mw.command("mi.status"))["tokens"] == []
    assert mw.command("mi.reload") == "reloaded"
    deadline = time.monotonic() + 10
    while not any("rules reloaded (mi.reload)" in line for line in mw.output) and time.monotonic() < deadline:
        time.sleep(0.05)  # the log line reaches stdout a moment after the command returned
    assert any("rules reloaded (mi.reload)" in line for line in mw.output)
    with httpx.Client(base_url=mw.web, trust_env=False) as anonymous:
        assert anonymous.post("/commands/mi.status", headers=XSRF).status_code == 403  # the password is required


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/test installs it)")
def test_real_browser_shows_the_apim_trace_view(web: tuple[Mitmweb, Any], tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    mw, emu = web
    flow_id = _flow_id(mw)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.goto(f"{mw.web}/?token={PASSWORD}#/flows/{flow_id}/response", wait_until="networkidle")
            page.get_by_text(MI_ADDED, exact=False).first.wait_for(timeout=15_000)
            # auto picked the view for this traced response; now choose it explicitly in the "View:" dropdown
            # (mitmweb lists view names in lower case).
            dropdown = page.locator("a", has=page.locator("b", has_text="View:")).first
            assert dropdown.inner_text().split("View:", 1)[1].strip() == "auto"
            dropdown.click()
            page.get_by_text("apim trace", exact=True).last.click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('a')].some(a => /View:\\s*apim trace/.test(a.innerText))",
                timeout=10_000,
            )
            page.get_by_text(MI_ADDED, exact=False).first.wait_for(timeout=10_000)
            _widen_details(page, 600)
            shown = page.inner_text("body")
            assert MI_ADDED in shown
            assert re.search(r"authentication-managed-identity \(\d+\.\d{3} ms\)", shown)
            assert _leaks(emu, page.content()) == 0
            page.screenshot(path=str(tmp_path / "shot.png"))
            if os.environ.get("APIM_MI_UPDATE_DOCS") == "1":  # the README's screenshot, refreshed on demand
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp_path / "shot.png", SCREENSHOT)
            # The request tab shows the injected header redacted, never the token.
            page.goto(f"{mw.web}/#/flows/{flow_id}/request", wait_until="networkidle")
            page.get_by_text("[token redacted]", exact=False).first.wait_for(timeout=10_000)
            assert _leaks(emu, page.content()) == 0
        finally:
            browser.close()
    assert (tmp_path / "shot.png").stat().st_size > 10_000
