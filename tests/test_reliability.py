"""Hot reload, access control and clean shutdown, through a real mitmdump."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from apim_mi.addon import ApimMi
from conftest import DEMO_AUDIENCE
from mitmproxy.test import taddons, tflow
from proxy import curl, start_mitmdump, write_rules


def rules_for(port: int, resource: str, path: str = "/api") -> str:
    return f"""
        rules:
          - name: r
            match: {{host: "127.0.0.1:{port}", path: {path}}}
            resource: "{resource}"
    """


def wait_for_reload(md: Any, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if md.text().count("apim-mi: rules reloaded") + md.text().count("keeping the previous rules") >= count:
            return
        time.sleep(0.1)
    raise AssertionError("no reload seen:\n" + md.text())


def test_hot_reload_good_edit_applies_broken_edit_keeps_last_good(
    tmp_path: Path, emu: Any, backend: Any, md_factory: Any
) -> None:
    port = backend.port
    rules = write_rules(tmp_path, rules_for(port, "https://wrong-audience.test"))
    md = md_factory(emu, rules)
    assert curl("-x", md.url, f"{backend.url}/api/1")[0] == 401  # wrong audience: the backend refuses

    time.sleep(1.1)  # mtime granularity
    write_rules(tmp_path, rules_for(port, DEMO_AUDIENCE))
    wait_for_reload(md, 1)
    status, body = curl("-x", md.url, f"{backend.url}/api/2")
    assert status == 200 and body["claims"]["aud"] == DEMO_AUDIENCE  # type: ignore[index]

    time.sleep(1.1)
    rules.write_text("rules:\n  - match: {host: x}\n    resource: r\n    bogus: 1\n")
    wait_for_reload(md, 2)
    assert f"{rules}:4:5: unknown field 'bogus'" in md.text()
    assert "keeping the previous rules" in md.text()
    assert curl("-x", md.url, f"{backend.url}/api/3")[0] == 200  # last good rules still in force
    assert md.proc.poll() is None


def test_hot_reload_watches_policy_files(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    policy = tmp_path / "policy.xml"
    policy.write_text(
        '<policies><inbound><base/><authentication-managed-identity resource="https://nope.test"/></inbound>'
        "</policies>"
    )
    rules = write_rules(tmp_path, f"""
        rules:
          - match: {{host: "127.0.0.1:{backend.port}"}}
            policy: policy.xml
    """)
    md = md_factory(emu, rules)
    assert curl("-x", md.url, f"{backend.url}/a")[0] == 401
    time.sleep(1.1)
    policy.write_text(
        f'<policies><inbound><base/><authentication-managed-identity resource="{DEMO_AUDIENCE}"/></inbound>'
        "</policies>"
    )
    wait_for_reload(md, 1)
    assert curl("-x", md.url, f"{backend.url}/a")[0] == 200


def test_clean_shutdown(tmp_path: Path, emu: Any, backend: Any) -> None:
    rules = write_rules(tmp_path, rules_for(backend.port, DEMO_AUDIENCE))
    md = start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"],
        env={**emu.env("imds"), "PYTHONWARNINGS": "default", "PYTHONASYNCIODEBUG": "0"},
        confdir=tmp_path / "c",
    )
    assert curl("-x", md.url, f"{backend.url}/api/x")[0] == 200
    rc = md.stop()
    time.sleep(0.3)
    out = md.text()
    assert rc == 0, out
    for bad in ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending", "Traceback"):
        assert bad not in out


def _flow_from(peer: str) -> Any:
    f = tflow.tflow()
    f.client_conn.peername = (peer, 50000)
    f.request.host, f.request.port, f.request.scheme = "api.contoso.test", 443, "https"
    return f


@pytest.mark.parametrize(
    ("peer", "allow", "proxyauth", "allowed"),
    [
        ("127.0.0.1", [], False, True),
        ("::1", [], False, True),
        ("::ffff:127.0.0.1", [], False, True),
        ("10.1.2.3", [], False, False),
        ("192.168.1.9", [], False, False),
        ("10.1.2.3", ["10.0.0.0/8"], False, True),
        ("10.1.2.3", ["192.168.0.0/16"], False, False),
        ("10.1.2.3", [], True, True),
    ],
)
def test_only_loopback_or_allowed_clients_cause_injection(
    peer: str, allow: list[str], proxyauth: bool, allowed: bool
) -> None:
    addon = ApimMi()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mi_allow_clients=allow)
        f = _flow_from(peer)
        if proxyauth:
            f.metadata["proxyauth"] = ("alice", "")
        assert addon._client_allowed(f) is allowed


def test_bad_allow_list_is_a_clear_error() -> None:
    addon = ApimMi()
    with taddons.context(addon) as tctx:
        addon._running = True
        from mitmproxy import exceptions

        with pytest.raises(exceptions.OptionsError, match=r"mi_allow_clients: '10\.0\.0\.0/33' is not an IP"):
            tctx.configure(addon, mi_allow_clients=["10.0.0.0/33"])


def test_no_token_to_a_remote_host_while_upstream_tls_is_not_verified(
    tmp_path: Path, emu: Any, md_factory: Any
) -> None:
    """With ``ssl_insecure`` mitmproxy would hand the token to whoever answers for the host: refused like plain
    http://, unless the rule opts in; the startup log says so."""
    rules = write_rules(tmp_path, f"""
        rules:
          - name: remote
            match: {{host: api.remote.test}}
            resource: "{DEMO_AUDIENCE}"
          - name: opted in
            match: {{host: api.optin.test}}
            resource: "{DEMO_AUDIENCE}"
            allow_http: true
    """)
    md = md_factory(emu, rules, "--set", "ssl_insecure=true", "--set", "connection_strategy=lazy")
    md.wait_for(r"ssl_insecure is on: upstream certificates are not verified")
    status, body = curl("-k", "-x", md.url, "https://api.remote.test/x")
    assert status == 500 and body["message"] == "Internal server error"  # type: ignore[index]
    md.wait_for(r"Refusing to send a managed identity token over https:// without certificate verification "
                r"\(ssl_insecure is on\) to api\.remote\.test")
    status, _ = curl("-k", "-x", md.url, "https://api.optin.test/x")
    assert status == 502  # the token was added and the request forwarded: the host does not exist here
    md.wait_for(r"\[opted in\] .*token added to Authorization")


def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path, emu: Any, md_factory: Any) -> None:
    rules = write_rules(tmp_path, f"""
        rules:
          - name: remote
            match: {{host: api.remote.test}}
            resource: "{DEMO_AUDIENCE}"
    """)
    md = md_factory(emu, rules)
    status, body = curl("-x", md.url, "http://api.remote.test/x")
    assert status == 500 and body["message"] == "Internal server error"  # type: ignore[index]
    md.wait_for(r"Refusing to send a managed identity token over plain http:// to api\.remote\.test")
