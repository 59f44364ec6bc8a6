"""``apim-mi proxy`` / ``apim-mi web`` / ``apim-mi addon-path``: run mitmproxy with the packaged addon script.

An installed wheel has no ``addon/mi.py``; these commands load ``apim_mi/script.py`` instead, in this process (the
same option parsing, output and exit codes as ``mitmdump`` / ``mitmweb``). Options may also come from the
environment, for containers: ``APIM_MI_SET_<OPTION>=value`` becomes ``--set <option>=value`` (option name in upper
case, e.g. ``APIM_MI_SET_MI_RULES``, ``APIM_MI_SET_LISTEN_PORT``); a list option (``mi_allow_clients``, ``mode``,
``allow_hosts`` …) takes comma-separated values. Command-line arguments come after them, so they win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

ENV_PREFIX = "APIM_MI_SET_"
SCRIPT = Path(__file__).resolve().parent / "script.py"

#: Options whose type is a list: one ``--set`` per comma-separated value (mitmproxy appends repeated ``--set``s).
LIST_OPTIONS = frozenset({"mi_allow_clients", "mode", "allow_hosts", "ignore_hosts", "tcp_hosts", "udp_hosts", "certs"})


def addon_path() -> Path:
    """The packaged mitmproxy script (``mitmdump -s "$(apim-mi addon-path)"``)."""
    return SCRIPT


def env_options(environ: Mapping[str, str]) -> list[str]:
    """``--set`` arguments for every ``APIM_MI_SET_<OPTION>`` variable, in a stable (sorted) order."""
    args: list[str] = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or len(var) == len(ENV_PREFIX):
            continue
        name, value = var[len(ENV_PREFIX) :].lower(), environ[var]
        values = [v.strip() for v in value.split(",") if v.strip()] if name in LIST_OPTIONS else [value]
        for v in values:
            args += ["--set", f"{name}={v}"]
    return args


def mitmproxy_args(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """What ``apim-mi proxy ARGV`` passes to mitmdump: the script, the environment's options, then ARGV."""
    return ["-s", str(SCRIPT), *env_options(environ), *argv]


def run(tool: str, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run ``mitmdump`` (tool="proxy") or ``mitmweb`` (tool="web") in this process; returns its exit code."""
    from mitmproxy.tools import main

    entry = main.mitmweb if tool == "web" else main.mitmdump
    try:
        entry(mitmproxy_args(argv, environ))
    except SystemExit as exc:  # mitmproxy exits 1 on bad options or a startup error the addon logged
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 0
    return 0


def health_url(environ: Mapping[str, str], ready: bool = False) -> str:
    """The ``/healthz`` (or ``/readyz``) URL of this process's ``mi_metrics`` endpoint, from ``APIM_MI_SET_MI_METRICS``
    (a wildcard listen address is reached on loopback). ValueError when the variable is missing or wrong."""
    from .metrics import parse_listen

    spec = environ.get(f"{ENV_PREFIX}MI_METRICS", "")
    if not spec:
        raise ValueError(f"{ENV_PREFIX}MI_METRICS is not set (the health endpoint is served by mi_metrics)")
    host, port = parse_listen(spec)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/{'readyz' if ready else 'healthz'}"


def healthcheck(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, what the endpoint said): the container HEALTHCHECK and a Kubernetes exec probe both use it."""
    import httpx

    try:
        r = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        return False, f"{url}: {e!r}"
    return r.status_code == 200, f"{url}: {r.status_code} {r.text.strip()}"
