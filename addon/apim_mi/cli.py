"""``apim-mi``: the command line. Subcommands: proxy, web, addon-path, validate, token, emulator, demo, trace.

Exit codes (every subcommand): 0 = ok, 1 = warnings (``validate``), 2 = errors (a broken rules file, no token, an
unreadable flow file, bad arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import LoadError, Location

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2
DEMO_RULES = Path(__file__).resolve().parent / "data" / "demo-rules.yaml"  # a copy of the checkout's rules.yaml
CREDENTIALS = ("default", "managed-identity", "workload-identity", "azure-cli", "emulator")

#: Resources exactly as Microsoft documents them for authentication-managed-identity (research/apim.md §2.7).
#: ``validate`` warns about a resource that misses one of these only by a trailing slash, case, ``api://`` or a
#: ``/.default`` suffix, or that looks like a misspelling of one.
DOCUMENTED_RESOURCES: tuple[str, ...] = (
    "https://management.azure.com/",
    "https://vault.azure.net",
    "https://graph.microsoft.com",
    "https://storage.azure.com/",
    "https://servicebus.azure.net/",
    "https://servicebus.azure.net",
    "https://eventhubs.azure.net/",
    "https://eventhubs.azure.net",
    "https://cognitiveservices.azure.com",
    "https://database.windows.net/",
    "https://signalr.azure.com",
)
_AZURE_HOST = re.compile(r"\.(azure\.(com|net)|microsoft\.com|windows\.net)$", re.I)


def _print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- validate ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resource:
    """A literal ``resource`` of an authentication-managed-identity statement, and where it was written."""

    rule: str
    value: str
    location: Location
    scope: str | None = None

    @property
    def written(self) -> str:
        """How the file spells it: ``scope '…/.default'`` or ``resource '…'``."""
        return f"scope '{self.scope}'" if self.scope else f"resource '{self.value}'"


def _resources(config: Any) -> list[_Resource]:
    out: list[_Resource] = []
    seen: set[tuple[str, str, str]] = set()
    for rule in config.rules:
        for stmt in rule.policy.statements():
            res = stmt.attrs.get("resource") if stmt.name == "authentication-managed-identity" else None
            if res is None or res.is_expression:
                continue
            key = (rule.name, res.text, str(stmt.location))
            if key not in seen:
                seen.add(key)
                out.append(_Resource(rule.name, res.text, stmt.location, getattr(rule, "scope", None)))
    return out


def audience_warnings(config: Any) -> list[str]:
    """Audience mistakes visible in the file alone: a documented Azure resource misspelt (trailing slash, case,
    ``api://``, ``/.default``, a typo in the host), the same audience written two ways in one file (``api://GUID`` vs
    ``GUID``, ``X`` vs ``X/``), and ``client-id`` given as an expression (APIM ignores it silently)."""
    from .diagnostics import near_miss
    from .scopes import scope_of

    warnings: list[str] = []
    resources = _resources(config)
    for r in resources:
        if r.value in DOCUMENTED_RESOURCES:
            continue
        if r.value.endswith("/.default"):
            warnings.append(
                f"{r.location}: rule '{r.rule}': resource '{r.value}' is a scope; authentication-"
                f"managed-identity takes the bare audience '{r.value.removesuffix('/.default')}' (or write it as "
                f"scope: '{r.value}' in a rules file)"
            )
            continue
        for doc in DOCUMENTED_RESOURCES:
            diffs = near_miss(r.value, doc)
            if diffs:
                warnings.append(
                    f"{r.location}: rule '{r.rule}': {r.written} differs from the documented "
                    f"'{scope_of(doc) if r.scope else doc}' only by "
                    f"{' and '.join(diffs)}; Entra issues aud exactly as written, and backends compare it exactly"
                )
                break
        else:
            host = urlsplit(r.value).hostname or ""
            if _AZURE_HOST.search(host):
                known = {urlsplit(d).hostname or "": d for d in DOCUMENTED_RESOURCES}
                close = difflib.get_close_matches(host, list(known), n=1, cutoff=0.8)
                if close and close[0] != host:
                    warnings.append(
                        f"{r.location}: rule '{r.rule}': resource host '{host}' is not a known Azure "
                        f"resource; did you mean '{known[close[0]]}'?"
                    )
    for i, later in enumerate(resources):
        for earlier in resources[:i]:
            diffs = near_miss(later.value, earlier.value)
            if diffs and not (later.value in DOCUMENTED_RESOURCES and earlier.value in DOCUMENTED_RESOURCES):
                warnings.append(
                    f"{later.location}: rule '{later.rule}': {later.written} and {earlier.written} (rule "
                    f"'{earlier.rule}', {earlier.location}) differ only by {' and '.join(diffs)}: they are different "
                    "audiences; a backend accepts only the form it is configured with"
                )
                break
    for rule in config.rules:
        for stmt in rule.policy.statements():
            cid = stmt.attrs.get("client-id") if stmt.name == "authentication-managed-identity" else None
            if cid is not None and cid.is_expression:
                warnings.append(
                    f"{stmt.location}: rule '{rule.name}': client-id is an expression; APIM ignores "
                    "expressions there (use a literal or a {{named value}})"
                )
    return warnings


def cmd_validate(args: argparse.Namespace) -> int:
    """Loads a rules file like the proxy does; prints errors with file:line:column and warnings."""
    from .matcher import Matcher
    from .rules import load_rules

    if Path(args.rules).is_dir():  # an APIOps extraction: report every problem, not just the first
        from .sources.apiops import validate_extraction

        return validate_extraction(Path(args.rules), effective=args.effective)
    from .sources.appsettings import is_appsettings, validate_appsettings

    if is_appsettings(Path(args.rules)):  # a .NET app's appsettings.json: every section's rule or error
        return validate_appsettings(Path(args.rules), effective=args.effective)
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
    warnings += audience_warnings(config)
    warnings += dict.fromkeys(w for rule in config.rules for w in rule.policy.warnings)
    scope = "applies to every request" if getattr(config, "applies_to_all", False) else f"{len(config.rules)} rule(s)"
    print(f"{config.path}: {scope}, credential: {config.credential or 'not set (mi_credential, else default)'}")
    for rule in config.rules:
        m = rule.match
        where = f"{m.scheme + '://' if m.scheme else ''}{m.host}{':' + str(m.port) if m.port else ''}{m.path}"
        methods = ",".join(sorted(m.methods)) or "any method"
        print(f"  {rule.name}: {where} ({methods})")
        if args.effective:
            from .policy.loader import effective_policy_xml

            print("    " + effective_policy_xml(rule.policy).replace("\n", "\n    "))
    count = len(warnings)
    if config.gateway is not None:  # the APIM instance it names (apim:)
        from .sources.apiops.report import report

        count += report(config.gateway, effective=args.effective)[1]
    for w in warnings:
        print(f"warning: {w}")
    print(f"{count} warning(s)" if count else "ok")
    return EXIT_WARNINGS if count else EXIT_OK


# -- token ------------------------------------------------------------------------------------------------------


def _expiry(exp: float) -> str:
    when = dt.datetime.fromtimestamp(exp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    left = int(exp - time.time())
    return f"{when} (in {left // 60} min {left % 60} s)" if left >= 0 else f"{when} (expired)"


async def _get_token(args: argparse.Namespace) -> tuple[Any, str]:
    """(Token, description of the source); raises TokenError."""
    from .tokens import TokenKey, TokenProvider, azure_credential_factory

    emulator = None
    source = args.credential
    try:
        if source == "emulator":
            from .emulator import MANAGED_IDENTITY_ENV_VARS, Emulator, EmulatorConfig

            _print_err("starting an embedded managed-identity emulator on 127.0.0.1 …")
            emulator = Emulator(EmulatorConfig())
            await emulator.start(host="127.0.0.1", port=0)
            for var in MANAGED_IDENTITY_ENV_VARS:
                os.environ.pop(var, None)
            os.environ.update(emulator.env("imds"))
            where = f"the embedded emulator at {emulator.url}"
        else:
            where = {"default": "DefaultAzureCredential", "managed-identity": "the managed identity endpoint",
                     "workload-identity": "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
                     "azure-cli": "the Azure CLI (az login)"}[source]  # fmt: skip
        identity = args.client_id or "system-assigned"
        _print_err(f"requesting a token for '{args.resource}' ({identity}) from {where} …")
        provider = TokenProvider(azure_credential_factory(args.timeout), timeout=args.timeout)
        try:
            result = await provider.get(TokenKey(source, args.client_id or "", args.resource))
        finally:
            await provider.close()
        return result.token, where
    finally:
        if emulator is not None:
            await emulator.stop()


def cmd_token(args: argparse.Namespace) -> int:
    """Gets one token the way the proxy would, and shows its claims (the token itself only with --raw)."""
    import logging

    from .tokens import TokenError

    logging.getLogger("azure").setLevel(logging.ERROR)  # one clear error line below instead of the SDK's warnings
    if args.scope is not None:
        from .scopes import resource_from_scope

        try:
            args.resource = resource_from_scope(args.scope)
        except ValueError as e:
            _print_err(f"error: --scope: {e}")
            return EXIT_ERRORS
    started = time.perf_counter()
    try:
        token, where = asyncio.run(_get_token(args))
    except TokenError as e:
        _print_err(f"error: no token for '{args.resource}' from {args.credential}: {e.reason}: {e.message}")
        if e.error_response:
            _print_err("token endpoint said: " + json.dumps(e.error_response))
        if e.reason == "AADSTS500011":
            _print_err("hint: the resource does not exist in the tenant as written; see docs/troubleshooting.md")
        return EXIT_ERRORS
    except KeyboardInterrupt:
        return EXIT_ERRORS
    elapsed = (time.perf_counter() - started) * 1000
    claims = dict(token.claims)
    if args.json:
        print(json.dumps({"claims": claims, "expires_on": int(token.expires_on)}, indent=2))
    elif args.raw:
        _print_err(
            f"token from {where} in {elapsed:.0f} ms; aud={claims.get('aud', '?')}, expires {_expiry(token.expires_on)}"
        )
        print(token.value)
    else:
        print(f"token from {where} in {elapsed:.0f} ms (pass --raw to print it)")
        for name in ("aud", "appid", "oid", "tid", "iss"):
            if name in claims:
                print(f"  {name:<6} {claims[name]}")
        print(f"  {'exp':<6} {int(token.expires_on)}  {_expiry(token.expires_on)}")
    return EXIT_OK


# -- trace ------------------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    """Renders the APIM traces stored in a saved flow file (``mitmdump -w``)."""
    from mitmproxy import io

    from .flowcontext import pretty_url
    from .trace import METADATA_KEY, canonical, render

    shown = 0
    try:
        with open(args.flows, "rb") as f:
            for flow in io.FlowReader(f).stream():
                meta = flow.metadata.get(METADATA_KEY)
                if not meta:
                    continue
                req = getattr(flow, "request", None)
                print(f"== {req.method} {pretty_url(req)}" if req is not None else "== flow")
                print(f"   {flow.comment}")
                if args.json:
                    print(json.dumps(canonical(meta.get("trace", {})), indent=2))
                elif "trace" in meta:
                    print(render(meta["trace"]))
                shown += 1
    except Exception as e:  # OSError, FlowReadException and friends: one clear line
        _print_err(f"error: cannot read {args.flows}: {e}")
        return EXIT_ERRORS
    if not shown:
        _print_err(f"{args.flows}: no flow with an apim-mi trace")
    return EXIT_OK


# -- demo -------------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Proxy + embedded emulator + demo backend: 401 direct, 200 through the proxy, then the trace."""
    import httpx

    backend = f"127.0.0.1:{args.backend_port}"
    workdir = Path(tempfile.mkdtemp(prefix="apim-mi-demo-"))
    flows = workdir / "flows.mitm"
    rules = args.rules or ("rules.yaml" if Path("rules.yaml").is_file() else str(DEMO_RULES))
    proxy_args = [
        "--listen-host", "127.0.0.1", "--listen-port", str(args.port),
        "--set", f"mi_rules={rules}", "--set", f"mi_demo_backend={backend}", "-w", str(flows),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "apim_mi.cli", "proxy", *proxy_args]  # apim-mi proxy, whatever PATH says
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    print(f"$ apim-mi proxy {' '.join(proxy_args)}")
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
            print(
                f"\nThe proxy keeps running on 127.0.0.1:{args.port}. Try:\n"
                f"  curl -x http://127.0.0.1:{args.port} {url}\nCtrl-C to stop."
            )
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


# -- healthcheck ------------------------------------------------------------------------------------------------


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the proxy's health (or readiness) endpoint answers 200, else 1 (Docker's HEALTHCHECK codes)."""
    from . import launcher

    try:
        url = args.url or launcher.health_url(os.environ, ready=args.ready)
    except ValueError as e:
        _print_err(f"error: {e}")
        return 1
    healthy, said = launcher.healthcheck(url, args.timeout)
    print(said)
    return EXIT_OK if healthy else 1


# -- emulator ---------------------------------------------------------------------------------------------------


def cmd_emulator(rest: Sequence[str]) -> int:
    """``apim-mi emulator …`` is ``python -m apim_mi.emulator …`` (same options, same exit codes)."""
    from .emulator import cli as emulator_cli

    try:
        args = emulator_cli.build_parser(prog="apim-mi emulator").parse_args(list(rest))
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERRORS)
    return emulator_cli.run(args)


# -- entry ------------------------------------------------------------------------------------------------------

DESCRIPTION = """\
Azure API Management's authentication-managed-identity policy on any machine, as a mitmproxy addon.
The proxy:  apim-mi proxy --set mi_rules=rules.yaml   (mitmdump with the packaged addon; apim-mi web: mitmweb)
This command also checks rules, fetches tokens, runs the local managed-identity emulator and reads traces."""

EPILOG = """\
examples:
  apim-mi proxy --set mi_rules=rules.yaml --set mi_credential=managed-identity
  mitmdump -s "$(apim-mi addon-path)" --set mi_rules=rules.yaml
  apim-mi validate rules.yaml --effective
  apim-mi validate apimartifacts
  apim-mi token --resource https://management.azure.com/ --credential emulator
  apim-mi emulator --port 8479 --well-known-resources
  apim-mi trace flows.mitm

exit codes: 0 ok, 1 warnings (validate), 2 errors.  Docs: README.md, docs/reference.md"""


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="apim-mi", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    passthrough = "options after it go to %s unchanged; APIM_MI_SET_<OPTION>=value variables become --set options"
    sub.add_parser("proxy", add_help=False, help="run mitmdump with the apim-mi addon; " + passthrough % "mitmdump")
    sub.add_parser("web", add_help=False, help="run mitmweb with the apim-mi addon; " + passthrough % "mitmweb")
    sub.add_parser("addon-path", help='print the packaged mitmproxy script, for mitmdump -s "$(apim-mi addon-path)"')
    v = sub.add_parser(
        "validate", help="check a rules file: errors with file:line:column, warnings (exit 0/1/2)",
        description="Load a rules file exactly as the proxy does. Errors name file:line:column (exit 2). Warnings "
                    "(exit 1): rules an earlier rule shadows, audiences that miss a documented Azure resource or "
                    "another rule's audience only by api://, a trailing slash or case, client-id expressions.",
    )  # fmt: skip
    v.add_argument("rules", nargs="?", default="rules.yaml",
                   help="rules file, .yaml or .xml (default rules.yaml), or an APIOps extraction folder")
    v.add_argument("--effective", action="store_true",
                   help="print each rule's (each operation's) composed APIM policy")
    v.set_defaults(func=cmd_validate)
    t = sub.add_parser(
        "token", help="get one token as the proxy would and show its claims",
        description="Get a token with azure-identity (the proxy's code path) and print its decoded claims (aud, "
                    "appid, oid, tid) and expiry. The token itself is printed only with --raw (alone on stdout, "
                    "so TOKEN=$(apim-mi token --raw ...) works). Exit 0 with a token, 2 without.",
    )  # fmt: skip
    audience = t.add_mutually_exclusive_group(required=True)
    audience.add_argument("--resource", help="audience exactly as in the policy (X and X/ differ)")
    audience.add_argument("--scope", help="the v2 form instead: exactly one '<resource>/.default' scope")
    t.add_argument("--client-id", default="", help="user-assigned identity's client id (default: system-assigned)")
    t.add_argument("--credential", choices=CREDENTIALS, default="default",
                   help="token source (default: default = DefaultAzureCredential); emulator starts an embedded "
                        "emulator on 127.0.0.1")  # fmt: skip
    t.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the token (default 10)")
    out = t.add_mutually_exclusive_group()
    out.add_argument("--raw", action="store_true", help="print the raw token (a secret!) on stdout")
    out.add_argument("--json", action="store_true", help="print claims and expiry as JSON")
    t.set_defaults(func=cmd_token)
    sub.add_parser(
        "emulator", add_help=False,
        help="run the local managed-identity emulator (IMDS, App Service, Entra); see apim-mi emulator --help",
    )  # fmt: skip
    d = sub.add_parser(
        "demo", help="proxy + embedded emulator + demo backend: 401 direct vs 200 through the proxy",
        description="Start mitmdump with the addon, the embedded emulator and a token-validating demo backend; call "
                    "the backend directly (401) and through the proxy (200), then print the APIM trace.",
    )  # fmt: skip
    d.add_argument(
        "--rules", default="", help="rules file (default: rules.yaml if present, else the packaged demo rules)"
    )
    d.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    d.add_argument("--backend-port", type=int, default=8480, help="demo backend port (default 8480)")
    d.add_argument("--serve", action="store_true", help="keep the proxy running afterwards")
    d.add_argument("-v", "--verbose", action="store_true", help="show all of mitmdump's output")
    d.set_defaults(func=cmd_demo)
    hc = sub.add_parser(
        "healthcheck", help="exit 0 if the proxy's /healthz (or /readyz) answers 200 (container HEALTHCHECK)",
        description="GET the health endpoint that mi_metrics serves: the URL comes from APIM_MI_SET_MI_METRICS (a "
                    "0.0.0.0 listener is reached on 127.0.0.1) unless --url is given. Exit 0 healthy, 1 not.",
    )  # fmt: skip
    hc.add_argument("--ready", action="store_true", help="check /readyz instead of /healthz")
    hc.add_argument("--url", default="", help="the endpoint to check (default: from APIM_MI_SET_MI_METRICS)")
    hc.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    hc.set_defaults(func=cmd_healthcheck)
    tr = sub.add_parser(
        "trace", help="print the APIM traces stored in a saved flow file (mitmdump -w)",
        description="Render the APIM trace of every matched flow in a file saved with mitmdump -w, as mitmweb's "
                    "'APIM trace' view shows it.",
    )  # fmt: skip
    tr.add_argument("flows", help="flow file written by mitmdump -w / mitmweb")
    tr.add_argument("--json", action="store_true", help="print the trace JSON (canonical key order)")
    tr.set_defaults(func=cmd_trace)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return cmd_emulator(argv[1:])
    if argv and argv[0] in ("proxy", "web"):
        from . import launcher

        return launcher.run(argv[0], argv[1:], os.environ)
    if argv[:1] == ["addon-path"]:
        from . import launcher

        print(launcher.addon_path())
        return EXIT_OK
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
