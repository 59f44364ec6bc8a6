"""``python -m apim_mi.emulator`` / ``apim-mi emulator``: run the emulator standalone until Ctrl-C.

The project CLI can delegate with ``main(argv)`` or embed the options with ``add_arguments(subparser)`` and then
call ``run(args)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from .config import (
    DEFAULT_APP_CLIENT_ID,
    DEFAULT_LIFETIME,
    DEFAULT_OTHER_TENANT_ID,
    DEFAULT_PORT,
    DEFAULT_TENANT_ID,
    WELL_KNOWN_RESOURCES,
    AppRegistration,
    EmulatorConfig,
)
from .config import parse_identity as _parse_identity
from .entra import WORKLOAD_TOKEN_LIFETIME
from .faults import Fault
from .server import Emulator
from .serving import serve_until_stopped

DEFAULT_HTTPS_PORT = DEFAULT_PORT + 1


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the emulator's options to ``parser`` (used by ``apim-mi emulator`` too)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 = ephemeral, printed at startup)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (the token endpoints then answer anyone who can reach it)")
    parser.add_argument("--tenant", default=DEFAULT_TENANT_ID, help=f"tenant id (default {DEFAULT_TENANT_ID})")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME,
                        help=f"token lifetime in seconds (default {DEFAULT_LIFETIME})")
    parser.add_argument("--latency", type=int, default=0, metavar="MS", help="delay before every token reply")
    parser.add_argument("--refresh-in", type=int, default=None, metavar="S",
                        help="send refresh_in (async azure-identity refreshes after S seconds)")
    parser.add_argument("--resource", action="append", default=[], metavar="R",
                        help="accept only these resources (repeatable); default: any resource")
    parser.add_argument("--well-known-resources", action="store_true",
                        help="accept only the well-known Azure resources (plus any --resource)")
    parser.add_argument("--identity", action="append", default=[], metavar="CLIENT_ID[:OBJECT_ID[:NAME]]",
                        help="user-assigned identity (repeatable); replaces the two default ones")
    parser.add_argument("--no-system-identity", action="store_true",
                        help="no system-assigned identity (requests without client_id get 'Identity not found')")
    parser.add_argument("--identity-header", default=None, metavar="SECRET",
                        help="App Service and Service Fabric IDENTITY_HEADER secret (default: random)")
    parser.add_argument("--arc-key-dir", default=None, metavar="DIR",
                        help="where the Azure Arc challenge writes key files; real clients read only "
                             "/var/opt/azcmagent/tokens (default: a private temporary directory)")
    parser.add_argument("--key", default=None, metavar="PEM",
                        help="RSA signing key; created if missing, so restarts keep the same kid")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help='queue a fault: 500, 503, timeout, drop, malformed, empty, wrong_audience, expired, '
                             'or a JSON object such as \'{"kind":"status","status":503,"retry_after":1}\'')
    parser.add_argument("--https-port", type=int, default=None, metavar="PORT",
                        help=f"HTTPS port of the Entra token endpoint (default {DEFAULT_HTTPS_PORT}, or ephemeral "
                             "with --port 0; -1 = no HTTPS listener)")
    parser.add_argument("--other-tenant", action="append", default=None, metavar="TENANT_ID",
                        help=f"another tenant the Entra endpoint issues app tokens for (repeatable; default "
                             f"{DEFAULT_OTHER_TENANT_ID})")
    parser.add_argument("--app-secret", action="append", default=[], metavar="SECRET",
                        help=f"a client secret of the default app {DEFAULT_APP_CLIENT_ID} (repeatable)")
    parser.add_argument("--app-certificate", action="append", default=[], metavar="PEM",
                        help="a certificate (PEM) whose key may sign the default app's client assertions")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="keep the local CA here (restarts stay trusted) and write --print-env's files here")
    parser.add_argument("--print-env", action="store_true",
                        help="print the workload-identity environment to export (AZURE_AUTHORITY_HOST, "
                             "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, SSL_CERT_FILE, "
                             "REQUESTS_CA_BUNDLE) instead of the startup line (which goes to stderr)")
    parser.add_argument("--json", action="store_true", help="print the startup line as JSON")
    parser.add_argument("--log-level", default="WARNING", help="Python log level (default WARNING)")
    return parser


def build_parser(prog: str = "python -m apim_mi.emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Local managed-identity emulator (IMDS, App Service 2019-08-01, Azure Arc, Service Fabric, "
        "Cloud Shell, and Entra client credentials over HTTPS) issuing RS256 JWTs.",
    )
    return add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    resources: list[str] | None = list(args.resource) or None
    if args.well_known_resources:
        resources = list(WELL_KNOWN_RESOURCES) + list(args.resource)
    kwargs: dict[str, object] = {}
    if args.identity:
        kwargs["user_identities"] = [_parse_identity(spec) for spec in args.identity]
    if args.no_system_identity:
        kwargs["system_identity"] = None
    if args.other_tenant is not None:
        kwargs["other_tenants"] = list(args.other_tenant)
    if args.app_secret or args.app_certificate:
        certificates = tuple(_read_file(path) for path in args.app_certificate)
        kwargs["apps"] = [AppRegistration(secrets=tuple(args.app_secret), certificates=certificates)]
    return EmulatorConfig(
        tenant_id=args.tenant,
        resources=resources,
        token_lifetime=args.lifetime,
        latency_ms=args.latency,
        refresh_in=args.refresh_in,
        identity_header=args.identity_header,
        key_path=args.key,
        ca_dir=args.state_dir,
        arc_key_dir=args.arc_key_dir,
        **kwargs,  # type: ignore[arg-type]
    )


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def https_port(args: argparse.Namespace) -> int | None:
    """The Entra listener's port: as given (-1 = none), else next to --port (ephemeral when --port is 0)."""
    if args.https_port is None:
        return 0 if args.port == 0 else DEFAULT_HTTPS_PORT
    return None if args.https_port < 0 else args.https_port


def env_lines(emulator: Emulator, directory: str) -> str:
    """``--print-env``: shell exports of the workload-identity environment, after a comment naming the rest."""
    head = (
        f"# apim-mi emulator on {emulator.url} (tenant {emulator.tenant_id}); managed identity instead: "
        f"export AZURE_POD_IDENTITY_AUTHORITY_HOST={emulator.url}"
    )
    exports = [f"export {k}={shlex.quote(v)}" for k, v in emulator.workload_identity_env(directory).items()]
    return "\n".join([head, *exports])


def parse_fault(spec: str) -> Fault:
    text = spec.strip()
    return Fault.parse(json.loads(text) if text.startswith("{") else text)


def startup_line(emulator: Emulator, as_json: bool) -> str:
    imds, appservice = emulator.env("imds"), emulator.env("appservice")
    if as_json:
        return json.dumps({
            "url": emulator.url,
            "tenant_id": emulator.tenant_id,
            "issuer": emulator.issuer,
            "jwks_uri": emulator.jwks_uri,
            "openid_configuration": emulator.openid_configuration_url,
            "env": {"imds": imds, "appservice": appservice, "cloudshell": emulator.env("cloudshell"),
                    "arc": emulator.env("arc"),
                    **({"servicefabric": emulator.env("servicefabric")} if emulator.has_authority else {})},
            "authority": emulator.authority_url if emulator.has_authority else None,
        })
    exports = " ".join(f"{k}={v}" for k, v in appservice.items())
    authority = f" | Entra: {emulator.authority_url}" if emulator.has_authority else ""
    return (
        f"apim-mi emulator on {emulator.url} (tenant {emulator.tenant_id}) | IMDS: export "
        f"AZURE_POD_IDENTITY_AUTHORITY_HOST={imds['AZURE_POD_IDENTITY_AUTHORITY_HOST']} | App Service: export "
        f"{exports}{authority} | JWKS: {emulator.jwks_uri} | Ctrl-C to stop"
    )


async def serve(config: EmulatorConfig, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    try:
        emulator = Emulator(config)  # loads or creates --key
        emulator.add_faults(*(parse_fault(spec) for spec in args.fault))
    except (ValueError, OSError) as exc:
        print(f"apim-mi emulator: {exc}", file=sys.stderr)
        return 2
    try:
        await emulator.start(args.host, args.port, allow_remote=args.allow_remote, https_port=https_port(args))
    except OSError as exc:
        print(f"apim-mi emulator: cannot listen on {args.host}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a non-loopback host without --allow-remote
        print(f"apim-mi emulator: {exc}", file=sys.stderr)
        return 2
    line = startup_line(emulator, args.json)
    if not args.print_env:
        return await serve_until_stopped(emulator, line, out)
    print(line, file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        directory = args.state_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="apim-mi-emulator-"))
        try:
            lines = env_lines(emulator, directory)
        except OSError as exc:
            await emulator.stop()
            print(f"apim-mi emulator: cannot write the environment files: {exc}", file=sys.stderr)
            return 1
        rotation = asyncio.create_task(
            emulator.rotate_workload_token(Path(directory) / "federated-token", WORKLOAD_TOKEN_LIFETIME / 2)
        )
        try:
            return await serve_until_stopped(emulator, lines, out)
        finally:
            rotation.cancel()


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (see :func:`add_arguments`)."""
    logging.basicConfig(level=str(args.log_level).upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.print_env and https_port(args) is None:
            raise ValueError("--print-env needs the HTTPS listener (drop --https-port -1)")
        config = config_from_args(args)
        for spec in args.fault:
            parse_fault(spec)
    except ValueError as exc:
        print(f"apim-mi emulator: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(config, args))
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m apim_mi.emulator``; returns the exit code instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run(args)
