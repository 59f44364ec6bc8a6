"""The "ten-line addon" users would write: a synchronous azure-identity call in the request hook.

A new ``ManagedIdentityCredential`` per request, so no cache and no single-flight; the blocking call also stalls
mitmproxy's event loop (every other connection waits). Used only by the benchmarks as the naive baseline.
"""

import os

from azure.identity import ManagedIdentityCredential
from mitmproxy import http

RESOURCE = os.environ.get("BENCH_RESOURCE", "api://00000000-0000-0000-0000-00000000a11c")


def request(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/api"):
        token = ManagedIdentityCredential().get_token(RESOURCE + "/.default").token
        flow.request.headers["Authorization"] = f"Bearer {token}"
