"""``apim-mi proxy`` / ``apim-mi web``: mitmdump and mitmweb with the packaged addon, options from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from apim_mi import launcher
from proxy import ROOT, clean_env, curl, start_mitmdump

APIM_MI = str(Path(sys.executable).parent / "apim-mi")


def test_env_options_become_set_arguments() -> None:
    env = {
        "APIM_MI_SET_MI_RULES": "/etc/apim-mi/rules.yaml",
        "APIM_MI_SET_MI_ALLOW_CLIENTS": "10.244.0.0/16, 10.0.0.0/8",
        "APIM_MI_SET_LISTEN_PORT": "8080",
        "APIM_MI_SET_": "ignored",
        "APIM_MI_LONG": "1",
        "PATH": "/usr/bin",
    }
    assert launcher.env_options(env) == [
        "--set", "listen_port=8080",
        "--set", "mi_allow_clients=10.244.0.0/16", "--set", "mi_allow_clients=10.0.0.0/8",
        "--set", "mi_rules=/etc/apim-mi/rules.yaml",
    ]  # fmt: skip
    assert launcher.mitmproxy_args(["--set", "mi_timeout=5"], {"APIM_MI_SET_MI_REDACT": "false"}) == [
        "-s", str(launcher.SCRIPT), "--set", "mi_redact=false", "--set", "mi_timeout=5",
    ]  # fmt: skip


def test_checkout_script_and_packaged_script_are_the_same_addon() -> None:
    def code(path: Path) -> list[str]:
        text = path.read_text().split('"""')[-1]
        return [line for line in text.splitlines() if line.strip()]

    assert code(ROOT / "addon" / "mi.py") == code(launcher.SCRIPT)
    assert (ROOT / "rules.yaml").read_text().splitlines()[1:] == (
        ROOT / "addon" / "apim_mi" / "data" / "demo-rules.yaml"
    ).read_text().splitlines()[1:]


def test_apim_mi_proxy_takes_options_from_the_environment(tmp_path: Path, emu: object, backend: object) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"rules:\n  - name: api\n    match: {{host: '127.0.0.1:{backend.port}'}}\n"  # type: ignore[attr-defined]
        "    resource: https://orders.contoso.test\n"
    )
    env = {"APIM_MI_SET_MI_RULES": str(rules), "APIM_MI_SET_MI_CREDENTIAL": "managed-identity", **emu.env("imds")}  # type: ignore[attr-defined]
    md = start_mitmdump([], env=env, confdir=tmp_path / "conf", command=(APIM_MI, "proxy"), cwd=tmp_path)
    try:
        status, body = curl("-x", md.url, f"{backend.url}/api/x")  # type: ignore[attr-defined]
        assert status == 200, (body, md.text())
        assert "credential: managed-identity" in md.text()
    finally:
        assert md.stop() == 0


def test_apim_mi_proxy_exit_code_and_error_for_broken_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: x\n    match: {host: a}\n    resourc: b\n")
    out = subprocess.run(
        [APIM_MI, "proxy", "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={tmp_path}"],
        env=clean_env({"APIM_MI_SET_MI_RULES": str(rules)}), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"{rules}:4:5" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_apim_mi_web_runs_mitmweb_with_the_addon(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("credential: emulator\nrules: []\n")
    args = ["--set", f"mi_rules={rules}", "--set", "web_open_browser=false", "--web-host", "127.0.0.1",
            "--web-port", "0"]  # fmt: skip
    md = start_mitmdump(args, confdir=tmp_path / "conf", command=(APIM_MI, "web"), cwd=tmp_path)
    try:
        md.wait_for(r"[Ww]eb server listening")
        assert "apim-mi: 0 rule(s) loaded" in md.text()
    finally:
        md.stop()
