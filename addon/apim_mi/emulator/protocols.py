"""The managed-identity protocols besides IMDS and App Service: Azure Arc, Service Fabric and Cloud Shell.

What each one's client sends and accepts (shared/research/azure-identity.md §2.3, §2.5, §2.6; azure-identity 1.27 and
MSAL 1.39 read in their source):

* **Azure Arc** (``IDENTITY_ENDPOINT`` + ``IMDS_ENDPOINT``): ``GET ?api-version=2020-06-01&resource=R`` with
  ``Metadata: true`` gets ``401`` and ``WWW-Authenticate: Basic realm=<dir>/<random>.key``; the client reads that
  file and repeats the request with ``Authorization: Basic <its contents>``. Clients only read key files from
  ``/var/opt/azcmagent/tokens`` (sync MSAL takes the realm's basename there; async azure-identity refuses any other
  directory), so the emulator must write them there for a real client: :class:`ArcKeys`.
* **Service Fabric** (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER`` + ``IDENTITY_SERVER_THUMBPRINT``): ``GET
  ?api-version=2019-07-01-preview&resource=R`` with ``Secret: <IDENTITY_HEADER>``, over HTTPS whose certificate the
  sync client pins by SHA-1 thumbprint; errors are ``{"error": {"code", "message"}}``.
* **Cloud Shell** (``MSI_ENDPOINT`` alone): ``POST`` form ``resource=R`` with ``Metadata: true``; the reply needs
  ``resource``. No user-assigned identities.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

ARC_PATH = "/arc/metadata/identity/oauth2/token"
ARC_API_VERSIONS = frozenset({"2019-11-01", "2020-06-01"})
#: Where azure-identity and MSAL read Arc key files on Linux; an emulator serving real Arc clients writes there.
ARC_KEY_DIR = "/var/opt/azcmagent/tokens"
ARC_SELECTORS = ("client_id", "object_id", "msi_res_id")
SERVICE_FABRIC_PATH = "/servicefabric/token"
SERVICE_FABRIC_API_VERSION = "2019-07-01-preview"
CLOUD_SHELL_PATH = "/oauth2/token"
_ARC_KEYS_KEPT = 64


class ArcKeys:
    """The Arc challenge's key files: each unauthenticated request gets a new random ``<hex>.key`` file in
    ``directory`` (0600, at most 4096 bytes as clients require); the last 64 secrets stay valid. Without a
    directory the files go to a private temporary one, which real clients will not read (see the module doc)."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="apim-mi-arc-")) if directory is None else Path(directory)
        self._keys: deque[tuple[Path, str]] = deque()

    def challenge(self) -> str:
        """Write a new key file and return the realm that names it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32)
        path = self.directory / f"{secrets.token_hex(16)}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
        self._keys.append((path, secret))
        while len(self._keys) > _ARC_KEYS_KEPT:
            old, _ = self._keys.popleft()
            old.unlink(missing_ok=True)
        return str(path)

    def accepts(self, authorization: str) -> bool:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "basic" or not secret:
            return False
        return any(hmac.compare_digest(secret.strip().encode(), known.encode()) for _, known in self._keys)

    def close(self) -> None:
        """Remove the key files written (and the temporary directory, if it was ours)."""
        for path, _ in self._keys:
            path.unlink(missing_ok=True)
        self._keys.clear()
        if self._owned:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)


def arc_challenge(realm: str) -> web.Response:
    body = {"error": "unauthorized_client", "error_description": "Authorization header with the key file required"}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": f"Basic realm={realm}"})


def service_fabric_error(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
