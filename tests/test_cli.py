"""``apim-mi``: validate (exit codes, warnings), token (embedded emulator), emulator delegation, trace, --help; and
mitmdump's startup summary through a real mitmdump."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from apim_mi import cli
from conftest import ROOT, USER_CLIENT_ID
from proxy import clean_env, curl, start_mitmdump, write_rules


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apim_mi.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=clean_env({"PYTHONPATH": str(ROOT / "addon")}))  # fmt: skip


def rules_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(body))
    return path


# -- validate -----------------------------------------------------------------------------------------------------


def test_validate_ok_exits_0() -> None:
    out = run_cli("validate", "rules.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule(s)" in out.stdout and out.stdout.rstrip().endswith("ok")


def test_validate_error_has_location_and_exits_2(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        """
        rules:
          - match: {host: example.com}
            resource: https://vault.azure.net
            hedaer: X-Token
    """,
    )
    out = run_cli("validate", str(path))
    assert out.returncode == 2
    assert f"error: {path}:5:5: unknown field 'hedaer'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "resources,expected",
    [
        (["https://management.azure.com"], "differs from the documented 'https://management.azure.com/' only by a "
                                           "trailing slash"),
        (["https://Vault.azure.net"], "differs from the documented 'https://vault.azure.net' only by letter case"),
        (["https://graph.microsoft.com/.default"], "is a scope"),
        (["https://vault.azure.com"], "did you mean 'https://vault.azure.net'"),
        (["api://0b7a5c39-2f4e-4f0a-9c1d-6a1f3e5b8d21", "0b7a5c39-2f4e-4f0a-9c1d-6a1f3e5b8d21"],
         "differ only by the 'api://' prefix"),
        (["https://orders.contoso.com", "https://orders.contoso.com/"], "differ only by a trailing slash"),
    ],
)  # fmt: skip
def test_validate_audience_warnings_exit_1(tmp_path: Path, resources: list[str], expected: str) -> None:
    rules = "".join(
        f'  - name: r{i}\n    match: {{host: h{i}.example.com}}\n    resource: "{res}"\n'
        for i, res in enumerate(resources)
    )
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + rules)
    out = run_cli("validate", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    warning = next(line for line in out.stdout.splitlines() if line.startswith("warning:"))
    assert expected in warning and f"{path}:" in warning, out.stdout


def test_validate_documented_forms_and_distinct_audiences_are_clean(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        """
        rules:
          - {match: {host: management.azure.com}, resource: "https://management.azure.com/"}
          - {match: {host: "*.vault.azure.net"}, resource: "https://vault.azure.net"}
          - {match: {host: "*.servicebus.windows.net"}, resource: "https://servicebus.azure.net"}
          - {match: {host: a.contoso.com}, resource: "api://0b7a5c39-2f4e-4f0a-9c1d-6a1f3e5b8d21"}
          - {match: {host: b.contoso.com}, resource: "api://0b7a5c39-2f4e-4f0a-9c1d-6a1f3e5b8d22"}
    """,
    )
    out = run_cli("validate", str(path))
    assert out.returncode == 0, out.stdout


def test_validate_shadowed_rule_and_effective(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        """
        rules:
          - {name: all, match: {host: "*.contoso.com"}, resource: "https://orders.contoso.test"}
          - {name: orders, match: {host: orders.contoso.com}, resource: "https://orders.contoso.test"}
    """,
    )
    out = run_cli("validate", str(path), "--effective")
    assert out.returncode == 1
    assert "rule 'orders' can never match: rule 'all'" in out.stdout
    assert '<authentication-managed-identity resource="https://orders.contoso.test"' in out.stdout


# -- token --------------------------------------------------------------------------------------------------------


def test_token_with_embedded_emulator_shows_claims_not_the_token() -> None:
    out = run_cli("token", "--resource", "https://management.azure.com/", "--credential", "emulator")
    assert out.returncode == 0, out.stderr
    assert "aud    https://management.azure.com/" in out.stdout
    assert "appid  5ca1ab1e-0000-4000-8000-00000000000a" in out.stdout
    assert "exp" in out.stdout and "(in 59 min" in out.stdout
    assert "eyJ" not in out.stdout + out.stderr
    assert "requesting a token for 'https://management.azure.com/'" in out.stderr  # progress


def test_token_raw_and_json_for_a_user_assigned_identity() -> None:
    import jwt

    raw = run_cli("token", "--resource", "api://x", "--client-id", USER_CLIENT_ID, "--credential", "emulator", "--raw")
    assert raw.returncode == 0, raw.stderr
    token = raw.stdout.strip()
    assert jwt.decode(token, options={"verify_signature": False})["appid"] == USER_CLIENT_ID
    js = run_cli("token", "--resource", "api://x", "--client-id", USER_CLIENT_ID, "--credential", "emulator", "--json")
    data = json.loads(js.stdout)
    assert data["claims"]["aud"] == "api://x" and data["claims"]["appid"] == USER_CLIENT_ID
    assert data["expires_on"] > 0


def test_token_with_a_v2_scope() -> None:
    out = run_cli("token", "--scope", "https://management.core.windows.net//.default", "--credential", "emulator",
                  "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["claims"]["aud"] == "https://management.core.windows.net/"
    bad = run_cli("token", "--scope", "https://graph.microsoft.com/User.Read", "--credential", "emulator")
    assert bad.returncode == 2
    assert "error: --scope: scope 'https://graph.microsoft.com/User.Read' is not a" in bad.stderr


def test_token_failure_exits_2_with_one_clear_error() -> None:
    out = run_cli("token", "--resource", "api://x", "--client-id", "99999999-9999-9999-9999-999999999999",
                  "--credential", "emulator")  # fmt: skip
    assert out.returncode == 2
    assert "error: no token for 'api://x' from emulator" in out.stderr and "Identity not found" in out.stderr
    assert "Traceback" not in out.stderr and "ImdsCredential.get_token failed" not in out.stderr


# -- emulator, help -----------------------------------------------------------------------------------------------


def test_emulator_delegates_with_its_own_prog() -> None:
    out = run_cli("emulator", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: apim-mi emulator")
    assert "--well-known-resources" in out.stdout and "--fault SPEC" in out.stdout
    bad = run_cli("emulator", "--no-such-option")
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
    assert cli.main(["emulator", "--lifetime", "x"]) == 2


def test_emulator_runs_and_prints_its_address() -> None:
    env = clean_env({"PYTHONPATH": str(ROOT / "addon")})
    cmd = [sys.executable, "-m", "apim_mi.cli", "emulator", "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["url"].startswith("http://127.0.0.1:") and line["env"]["imds"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_help_lists_every_command() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("validate", "token", "emulator", "demo", "trace", "exit codes"):
        assert name in out.stdout
    for sub in ("validate", "token", "trace", "demo"):
        assert run_cli(sub, "--help").returncode == 0


# -- trace and the startup summary through a real mitmdump --------------------------------------------------------


def test_startup_summary_and_trace_of_a_saved_flow(tmp_path: Path, emu: Any, backend: Any, md_factory: Any) -> None:
    rules = write_rules(
        tmp_path,
        f"""
        rules:
          - name: demo
            match: {{host: "127.0.0.1:{backend.port}"}}
            resource: https://orders.contoso.test
    """,
    )
    flows = tmp_path / "flows.mitm"
    md = md_factory(emu, rules, "-w", str(flows), "--set", "mi_allow_clients=10.0.0.0/8")
    md.wait_for(rf"apim-mi: 1 rule\(s\) loaded from {rules}; credential: managed-identity")
    md.wait_for(r"apim-mi: tokens are injected only for loopback clients and 10\.0\.0\.0/8")
    assert "embedded managed-identity emulator" not in md.text()
    status, _ = curl("-x", md.url, f"{backend.url}/api/x")
    assert status == 200
    md.stop()
    out = run_cli("trace", str(flows), "--json")
    assert out.returncode == 0, out.stderr
    body = out.stdout.split("\n", 2)[2]
    trace = json.loads(body)
    assert list(trace)[:2] == ["traceId", "traceEntries"]
    assert "eyJ" not in out.stdout
    text = run_cli("trace", str(flows))
    assert "authentication-managed-identity (" in text.stdout


def test_startup_summary_with_embedded_emulator(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        credential: emulator
        rules:
          - {match: {host: orders.contoso.com}, resource: "https://orders.contoso.test"}
          - {match: {host: billing.contoso.com}, resource: "https://orders.contoso.test"}
    """,
    )
    md = start_mitmdump(["--set", f"mi_rules={rules}", "--set", "proxyauth=user:pass"], confdir=tmp_path / "c")
    try:
        md.wait_for(rf"apim-mi: 2 rule\(s\) loaded from {rules}; credential: emulator")
        md.wait_for(r"apim-mi: embedded managed-identity emulator at http://127\.0\.0\.1:\d+ \(tenant ")
        md.wait_for(r"injected only for loopback clients and clients authenticated with --proxyauth")
    finally:
        md.stop()


def test_validate_warns_about_a_policy_outside_its_documented_sections(tmp_path: Path) -> None:
    (tmp_path / "p.xml").write_text(
        "<policies>\n  <inbound><base/></inbound>\n  <outbound>\n"
        '    <authentication-managed-identity resource="https://vault.azure.net" output-token-variable-name="t"/>\n'
        "  </outbound>\n</policies>\n"
    )
    path = rules_file(tmp_path, "rules:\n  - match: {host: example.com}\n    policy: p.xml\n")
    out = run_cli("validate", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert (f"warning: {tmp_path / 'p.xml'}:4:6: 'authentication-managed-identity' is outside its documented "
            "sections (inbound) in 'outbound'") in out.stdout  # fmt: skip
