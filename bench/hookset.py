"""apim-mi's per-flow hook set doing nothing but the trivial addon's header: what mitmproxy's dispatch of these
hooks costs by itself (each implemented hook is called, with its arguments gathered, on every flow). The limit for
apim-mi, next to the trivial addon's one hook; used only by the benchmarks."""

from mitmproxy import http

VALUE = "Bearer trivial-constant"


class HookSet:
    # no requestheaders: apim-mi offers it only while a request body may stream (stream_large_bodies, or an addon
    # before it with that hook), which the benchmark's proxies never do

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/api"):
            flow.request.headers["Authorization"] = VALUE

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        return None

    def error(self, flow: http.HTTPFlow) -> None:
        return None


addons = [HookSet()]
