"""``apim-mi``: the command line. Subcommands: demo, validate, trace, emulator."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LoadError

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2
ADDON_SCRIPT = Path(__file__).resolve().parent.parent / "mi.py"


def _print_err(message: str) -> None:
    print(message, file=sys.stderr)


# -- validate ---------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Loads a rules file like the proxy does; prints errors with file:line:column and warnings."""
    from .matcher import Matcher
    from .rules import load_rules

    try:
        config = load_rules(args.rules)
    except LoadError as e:
        _print_err(f"error: {e}")
        return EXIT_ERRORS
    warnings = [
        f"{later.location}: rule '{later.name}' can never match: rule '{earlier.name}' ({earlier.location}) "
        "matches every request it would"
        for later, earlier in Matcher(config.rules).shadowed()
    ]
    print(f"{config.path}: {len(config.rules)} rule(s), credential: {config.credential or 'default'}")
    for rule in config.rules:
        m = rule.match
        where = f"{m.scheme + '://' if m.scheme else ''}{m.host}{':' + str(m.port) if m.port else ''}{m.path}"
        methods = ",".join(sorted(m.methods)) or "any method"
        print(f"  {rule.name}: {where} ({methods})")
        if args.effective:
            from .policy.loader import effective_policy_xml

            print("    " + effective_policy_xml(rule.policy).replace("\n", "\n    "))
    for w in warnings:
        print(f"warning: {w}")
    return EXIT_WARNINGS if warnings else EXIT_OK


# -- trace ------------------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    """Renders the APIM traces stored in a saved flow file (``mitmdump -w``)."""
    from mitmproxy import io

    from .trace import METADATA_KEY, render

    shown = 0
    try:
        with open(args.flows, "rb") as f:
            for flow in io.FlowReader(f).stream():
                meta = flow.metadata.get(METADATA_KEY)
                if not meta:
                    continue
                req = getattr(flow, "request", None)
                print(f"== {req.method} {req.pretty_url}" if req is not None else "== flow")
                print(f"   {flow.comment}")
                if args.json:
                    print(json.dumps(meta.get("trace", {}), indent=2))
                elif "trace" in meta:
                    print(render(meta["trace"]))
                shown += 1
    except (OSError, Exception) as e:  # FlowReadException and friends: one clear line
        _print_err(f"error: cannot read {args.flows}: {e}")
        return EXIT_ERRORS
    if not shown:
        _print_err(f"{args.flows}: no flow with an apim-mi trace")
    return EXIT_OK


# -- demo -------------------------------------------------------------------------------------------------------


def _mitmdump() -> str:
    exe = Path(sys.executable).parent / "mitmdump"
    return str(exe) if exe.exists() else "mitmdump"


def cmd_demo(args: argparse.Namespace) -> int:
    """Proxy + embedded emulator + demo backend: 401 direct, 200 through the proxy, then the trace."""
    import httpx

    backend = f"127.0.0.1:{args.backend_port}"
    workdir = Path(tempfile.mkdtemp(prefix="apim-mi-demo-"))
    flows = workdir / "flows.mitm"
    cmd = [
        _mitmdump(), "-s", str(ADDON_SCRIPT), "--listen-host", "127.0.0.1", "--listen-port", str(args.port),
        "--set", f"mi_rules={args.rules}", "--set", f"mi_demo_backend={backend}", "-w", str(flows),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    print(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines: list[str] = []
    threading.Thread(target=_echo, args=(proc, lines, args.verbose), daemon=True).start()
    try:
        if not _wait_ready(proc, lines):
            _print_err("error: mitmdump did not start:\n" + "\n".join(lines))
            return EXIT_ERRORS
        url = f"http://{backend}/api/hello"
        with httpx.Client(trust_env=False, timeout=20) as direct:
            r = direct.get(url)
        print(f"\n1) directly to the protected backend:  GET {url}  ->  {r.status_code}")
        print(f"   WWW-Authenticate: {r.headers.get('www-authenticate', '')}")
        with httpx.Client(proxy=f"http://127.0.0.1:{args.port}", trust_env=False, timeout=20) as proxied:
            r = proxied.get(url)
        print(f"2) through apim-mi (-x http://127.0.0.1:{args.port}):  GET {url}  ->  {r.status_code}")
        if r.headers.get("content-type", "").startswith("application/json"):
            print("   the backend validated a token with claims: " + json.dumps(r.json().get("claims", {})))
        time.sleep(0.3)
        print("\n3) the APIM trace of that request (also in mitmweb's 'APIM trace' view):\n")
        cmd_trace(argparse.Namespace(flows=str(flows), json=False))
        if args.serve:
            print(f"\nThe proxy keeps running on 127.0.0.1:{args.port}. Try:\n"
                  f"  curl -x http://127.0.0.1:{args.port} {url}\nCtrl-C to stop.")
            proc.wait()
        return EXIT_OK if r.status_code == 200 else EXIT_ERRORS
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _echo(proc: subprocess.Popen[str], lines: list[str], verbose: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if verbose or "apim-mi" in line or "error" in line.lower():
            print(f"   [mitmdump] {line}")


def _wait_ready(proc: subprocess.Popen[str], lines: list[str], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(r"apim-mi: tokens are injected only for", line) for line in lines):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# -- emulator ---------------------------------------------------------------------------------------------------


def cmd_emulator(rest: Sequence[str]) -> int:
    from .emulator.__main__ import main as emulator_main

    return emulator_main(list(rest))


# -- entry ------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apim-mi",
        description="Azure API Management's authentication-managed-identity policy on any machine (mitmproxy addon).",
        epilog="Run the proxy itself with: mitmdump -s addon/mi.py [--set mi_rules=rules.yaml]",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="check a rules file (errors with file:line:column, warnings)")
    v.add_argument("rules", nargs="?", default="rules.yaml")
    v.add_argument("--effective", action="store_true", help="print each rule's composed policy")
    v.set_defaults(func=cmd_validate)
    t = sub.add_parser("trace", help="print the APIM traces stored in a saved flow file (mitmdump -w)")
    t.add_argument("flows")
    t.add_argument("--json", action="store_true", help="print the trace JSON instead of the portal view")
    t.set_defaults(func=cmd_trace)
    d = sub.add_parser("demo", help="proxy + embedded emulator + demo backend: 401 direct vs 200 through the proxy")
    d.add_argument("--rules", default="rules.yaml")
    d.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    d.add_argument("--backend-port", type=int, default=8480, help="demo backend port (default 8480)")
    d.add_argument("--serve", action="store_true", help="keep the proxy running afterwards")
    d.add_argument("-v", "--verbose", action="store_true", help="show all of mitmdump's output")
    d.set_defaults(func=cmd_demo)
    sub.add_parser("emulator", help="run the local managed-identity emulator (see: apim-mi emulator --help)",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return cmd_emulator(argv[1:])
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
