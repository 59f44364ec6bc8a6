"""Running a real ``mitmdump -s addon/mi.py`` subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")
_LISTEN = re.compile(r"listening at (?:http://)?\*?:?\[?([0-9a-f.:]+)\]?:(\d+)", re.I)

# Every variable that would let azure-identity pick a managed-identity source other than the one a test sets.
MI_ENV = (
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT",
    "MSI_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
    "AZURE_TOKEN_CREDENTIALS", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
    "https_proxy", "ALL_PROXY", "all_proxy",
)  # fmt: skip


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any managed-identity or proxy variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in MI_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Mitmdump:
    """A running mitmdump; ``output`` collects every line it printed."""

    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return "\n".join(self.output)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                m = rx.search(line)
                if m:
                    return m
            time.sleep(0.05)
        raise AssertionError(f"mitmdump never printed {pattern!r}; output:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _pump(proc: subprocess.Popen[str], out: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))


def start_mitmdump(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    confdir: Path,
    timeout: float = 20.0,
    command: Sequence[str] = (MITMDUMP, "-s", str(ROOT / "addon" / "mi.py")),
    cwd: Path = ROOT,
) -> Mitmdump:
    """Starts mitmdump (``command``: the checkout's by default) on an ephemeral loopback port with the addon, and
    waits until it listens."""
    cmd = [*command, "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}", *args]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    output: list[str] = []
    threading.Thread(target=_pump, args=(proc, output), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(output):
            m = _LISTEN.search(line)
            if m:
                md = Mitmdump(proc, int(m.group(2)), output)
                md.wait_for(r"apim-mi: tokens are injected only for|apim-mi: could not start", timeout)
                return md
        if proc.poll() is not None:
            time.sleep(0.2)
            raise AssertionError(f"mitmdump exited with {proc.returncode}:\n" + "\n".join(output))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("mitmdump did not start listening:\n" + "\n".join(output))


def run_mitmdump_expecting_exit(args: Sequence[str], *, confdir: Path, timeout: float = 30.0) -> tuple[int, str]:
    """Runs mitmdump that should refuse to start; returns (exit code, combined output)."""
    cmd = [
        MITMDUMP, "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}",
        "-s", str(ROOT / "addon" / "mi.py"), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def curl(*args: str, timeout: float = 20) -> tuple[int, dict[str, Any] | str]:
    """(HTTP status, parsed JSON body or text) from a real curl; no proxy variables leak in."""
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-m", str(timeout), "-w", "\n%{http_code}", *args],
        capture_output=True, text=True, timeout=timeout + 5, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except json.JSONDecodeError:
        return int(code), body


def write_rules(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def proxy_for(tmp_path: Path, emu: Any, rules: Path, *extra: str, protocol: str = "imds") -> Mitmdump:
    return start_mitmdump(
        ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity", *extra],
        env=emu.env(protocol),
        confdir=tmp_path / "confdir",
    )
