"""The async variant of the naive addon: one async azure-identity credential, awaited in the request hook.

azure-identity caches the token inside the credential, but concurrent cache misses are not coalesced (no
single-flight): N requests on a cold cache make N token requests. Its refresh happens inline in the request that
notices the token is due. Used only by the benchmarks as the naive baseline.
"""

import os

from azure.identity.aio import ManagedIdentityCredential
from mitmproxy import http

RESOURCE = os.environ.get("BENCH_RESOURCE", "api://00000000-0000-0000-0000-00000000a11c")
credential = ManagedIdentityCredential()


async def request(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/api"):
        token = (await credential.get_token(RESOURCE + "/.default")).token
        flow.request.headers["Authorization"] = f"Bearer {token}"


async def done() -> None:
    await credential.close()
