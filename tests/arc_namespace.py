"""Azure Arc end to end, run by tests/test_mi_protocols.py inside a private mount namespace whose /var/opt is a fresh
tmpfs (``unshare -m --propagation private`` + ``mount -t tmpfs``): Arc clients read the challenge's key file only from
/var/opt/azcmagent/tokens, so the emulator must write there, and the host's /var/opt must never see it.

Prints one JSON object: what sync and aio azure-identity, MSAL, ``apim-mi token`` and a mitmdump proxy got.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apim_mi.backend import DemoBackendThread
from apim_mi.emulator import EmulatorConfig, EmulatorThread
from apim_mi.emulator.protocols import ARC_KEY_DIR
from proxy import MI_ENV, curl, start_mitmdump

RESOURCE = "https://vault.azure.net"
USER = "11111111-1111-1111-1111-111111111111"
FAST: dict[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.01, "connection_timeout": 2, "read_timeout": 5}


def on_tmpfs(path: str) -> bool:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return any(line.split()[1] == path and line.split()[2] == "tmpfs" for line in mounts)


def main(workdir: Path) -> dict[str, Any]:
    if not on_tmpfs("/var/opt"):
        raise SystemExit("refusing to run: /var/opt is not a private tmpfs (run inside unshare -m)")
    from azure.identity import ManagedIdentityCredential
    from azure.identity import aio as identity_aio

    out: dict[str, Any] = {}
    with EmulatorThread(EmulatorConfig(arc_key_dir=ARC_KEY_DIR)) as emu:
        for name in MI_ENV:
            os.environ.pop(name, None)
        os.environ.update(emu.env("arc"))
        key = emu.emulator.signing_key.private_key.public_key()

        def claims(token: str, audience: str = RESOURCE) -> dict[str, Any]:
            return dict(jwt.decode(token, key, algorithms=["RS256"], audience=audience))

        out["sync_system"] = claims(ManagedIdentityCredential(**FAST).get_token(RESOURCE + "/.default").token)
        out["sync_user"] = claims(
            ManagedIdentityCredential(client_id=USER, **FAST).get_token(RESOURCE + "/.default").token
        )

        async def aio() -> dict[str, Any]:
            async with identity_aio.ManagedIdentityCredential(client_id=USER, **FAST) as cred:
                return claims((await cred.get_token(RESOURCE + "/.default")).token)

        out["aio_user"] = asyncio.run(aio())

        import msal
        import requests

        client = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=USER), http_client=requests.Session()
        )
        result = client.acquire_token_for_client(resource=RESOURCE)
        out["msal_user"] = claims(result["access_token"]) if "access_token" in result else result
        requests_seen = emu.stats().requests
        out["arc_requests"] = [(r.protocol, r.status, bool(r.identity)) for r in requests_seen]
        out["key_files_left"] = sorted(os.listdir(ARC_KEY_DIR))

        env = {**{k: v for k, v in os.environ.items() if k not in MI_ENV}, **emu.env("arc")}
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "apim-mi"), "token", "--credential", "managed-identity",
             "--resource", RESOURCE, "--client-id", USER, "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out["cli"] = json.loads(cli.stdout) if cli.returncode == 0 else {"error": cli.stderr}

        audience = "https://orders.contoso.test"
        with DemoBackendThread(jwks_uri=emu.jwks_uri, issuer=emu.issuer, audiences=[audience]) as backend:
            rules = workdir / "rules.yaml"
            rules.write_text(f"rules:\n  - name: arc\n    match: {{host: '127.0.0.1:{backend.port}'}}\n"
                             f"    resource: {audience}\n")  # fmt: skip
            md = start_mitmdump(
                ["--set", f"mi_rules={rules}", "--set", "mi_credential=managed-identity"],
                env=emu.env("arc"), confdir=workdir / "conf",
            )  # fmt: skip
            try:
                status, body = curl("-x", md.url, f"{backend.url}/api/orders")
                out["proxy"] = {
                    "status": status,
                    "aud": body.get("claims", {}).get("aud") if isinstance(body, dict) else body,
                }
            finally:
                md.stop()
    out["key_files_after_stop"] = sorted(os.listdir(ARC_KEY_DIR))
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
