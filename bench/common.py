"""Shared plumbing for the benchmarks: clean environments, pinned subprocesses, a raw keep-alive HTTP client.

Loopback only: every server binds 127.0.0.1, every client connects to 127.0.0.1, and every mitmdump runs in an
environment stripped of proxy and managed-identity variables except the emulator's, so azure-identity can never
reach 169.254.169.254.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")

# Everything that could make azure-identity (or an HTTP client) go anywhere but the emulator.
_STRIP_PREFIXES = ("AZURE_", "IDENTITY_", "MSI_")
_STRIP = {
    "IMDS_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP and not k.startswith(_STRIP_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- CPU placement ---------------------------------------------------------------------------------------------


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning() -> tuple[list[str], str]:
    """(prefix for the proxy's command line, description). With >= 2 CPUs: harness, backend, load generator and
    emulator on the first CPU, mitmdump alone on the second."""
    avail = cpus()
    if len(avail) >= 2 and shutil.which("taskset"):
        os.sched_setaffinity(0, {avail[0]})
        return ["taskset", "-c", str(avail[1])], (
            f"mitmdump pinned to CPU {avail[1]} (taskset); load generator, backend, emulator and harness on "
            f"CPU {avail[0]}"
        )
    return [], "no pinning (fewer than 2 CPUs or no taskset)"


# -- subprocesses ----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)

    def text(self, last: int = 40) -> str:
        return "\n".join(self.output[-last:])

    def rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def cpu_seconds(self) -> float:
        """CPU time the process has used (user + system): what a request costs it, whatever else the machine runs."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _status_kib(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _pump(proc: subprocess.Popen[str], out: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))


def wait_port(port: int, proc: subprocess.Popen[str] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def spawn(name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None, port: int) -> Proc:
    proc = subprocess.Popen(
        list(cmd),
        cwd=ROOT,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    p = Proc(name, proc, port)
    threading.Thread(target=_pump, args=(proc, p.output), daemon=True).start()
    return p


def start_backend() -> Proc:
    port = free_port()
    p = spawn("backend", [PYTHON, str(BENCH / "backend.py"), str(port)], port=port)
    if not wait_port(port, p.proc, 10):
        raise RuntimeError(f"backend did not start:\n{p.text()}")
    return p


def start_mitmdump(
    name: str,
    backend_port: int,
    addon_args: Sequence[str],
    *,
    env: dict[str, str],
    confdir: Path,
    pin: Sequence[str],
    timeout: float = 60.0,
) -> Proc:
    """mitmdump in reverse mode to the backend, on a fixed free loopback port, quiet (no per-flow output)."""
    port = free_port()
    cmd = [
        *pin,
        MITMDUMP,
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--mode",
        f"reverse:http://127.0.0.1:{backend_port}",
        "--set",
        "flow_detail=0",
        "--set",
        "termlog_verbosity=warn",
        *addon_args,
    ]
    p = spawn(name, cmd, env=env, port=port)
    if not wait_port(port, p.proc, timeout):
        p.stop()
        time.sleep(0.2)
        raise RuntimeError(f"mitmdump '{name}' did not start (rc={p.proc.returncode}):\n{p.text()}")
    return p


# -- a raw HTTP/1.1 keep-alive client --------------------------------------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(r, w)

    async def get(self, path: str, headers: str = "") -> tuple[int, float, float, bytes]:
        """(status, seconds to the status line, seconds to the whole response, body)."""
        t0 = time.perf_counter()
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        line = await self.r.readline()
        t1 = time.perf_counter()
        if not line:
            raise ConnectionError("connection closed")
        status = int(line.split()[1])
        length, chunked = 0, False
        while True:
            h = await self.r.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.r.readline()).split(b";")[0], 16)
                chunk = await self.r.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.r.readexactly(length) if length else b""
        return status, t1 - t0, time.perf_counter() - t0, body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.w.close()


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    async def one() -> tuple[int, bytes]:
        c = await Conn.open(port)
        try:
            status, _, _, body = await asyncio.wait_for(c.get(path), timeout)
            return status, body
        finally:
            c.close()

    return asyncio.run(one())


# -- statistics ------------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Percentile by nearest rank (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def spread(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if v == v]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
