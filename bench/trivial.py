"""The trivial addon: sets ``Authorization`` from a constant on every request under /api. The limit for any addon
(one Python hook per flow that changes one header); used only by the benchmarks."""

from mitmproxy import http

VALUE = "Bearer trivial-constant"


def request(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/api"):
        flow.request.headers["Authorization"] = VALUE
