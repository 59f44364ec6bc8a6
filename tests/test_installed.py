"""The installed package, as an operator gets it: a wheel in a fresh venv outside the checkout (built by
``scripts/test``, which exports ``APIM_MI_INSTALLED_VENV``). The demo runs through ``apim-mi proxy``, and
``mitmdump -s "$(apim-mi addon-path)"`` injects a token the demo backend validates."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from proxy import ROOT, clean_env, curl, start_mitmdump

VENV = os.environ.get("APIM_MI_INSTALLED_VENV", "")
if not VENV and os.environ.get("CI"):
    pytest.fail("APIM_MI_INSTALLED_VENV is not set: run the suite with scripts/test", pytrace=False)
pytestmark = pytest.mark.skipif(not VENV, reason="no installed venv (scripts/test builds it: APIM_MI_INSTALLED_VENV)")
BIN = Path(VENV) / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _installed(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "apim-mi"), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_the_installed_package_is_not_the_checkout(tmp_path: Path) -> None:
    out = _installed("addon-path", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    script = Path(out.stdout.strip())
    assert script.is_file() and script.name == "script.py"
    assert script.is_relative_to(Path(VENV)) and not script.is_relative_to(ROOT)
    assert "addons = [ApimMi()]" in script.read_text()


def test_demo_runs_through_apim_mi_proxy(tmp_path: Path) -> None:
    """``apim-mi demo`` from an empty directory: the packaged demo rules, the proxy started as ``apim-mi proxy``,
    401 direct and 200 through the proxy, then the trace."""
    out = _installed("demo", "--port", str(_free_port()), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "$ apim-mi proxy " in text and "demo-rules.yaml" in text
    assert "directly to the protected backend:  GET http://127.0.0.1:8480/api/hello  ->  401" in text
    assert "through apim-mi" in text and "/api/hello  ->  200" in text
    assert "authentication-managed-identity" in text  # the trace


def test_mitmdump_with_the_addon_path(tmp_path: Path) -> None:
    """The installed mitmdump with ``-s "$(apim-mi addon-path)"``: a token the demo backend validates."""
    script = _installed("addon-path", cwd=tmp_path).stdout.strip()
    backend = _free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "credential: emulator\nrules:\n"
        f"  - name: demo\n    match: {{host: '127.0.0.1:{backend}', path: /api}}\n"
        "    resource: api://00000000-0000-0000-0000-00000000a11c\n"
    )
    md = start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", f"mi_demo_backend=127.0.0.1:{backend}"],
        confdir=tmp_path / "confdir", command=(str(BIN / "mitmdump"), "-s", script), cwd=tmp_path,
    )  # fmt: skip
    try:
        status, body = curl("-x", md.url, f"http://127.0.0.1:{backend}/api/hello")
        assert status == 200, (body, md.text())
        assert isinstance(body, dict) and body["claims"]["aud"] == "api://00000000-0000-0000-0000-00000000a11c"
        assert curl(f"http://127.0.0.1:{backend}/api/hello")[0] == 401
    finally:
        assert md.stop() == 0
