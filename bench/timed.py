"""apim-mi with its per-flow hooks timed inside the live proxy: thread CPU time of each hook, including the work it
hands mitmproxy to await; medians written as JSON to ``$APIM_MI_HOOK_TIMES`` when mitmdump stops. Used only by the
benchmarks (``bench/harness.py``, throughput section)."""

from __future__ import annotations

import inspect
import json
import os
import statistics
import time
from typing import Any

from apim_mi.addon import ApimMi

HOOKS = ("requestheaders", "request", "responseheaders", "response")


class TimedApimMi(ApimMi):
    """The addon, with the thread time of every per-flow hook call recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.spent: dict[str, list[int]] = {hook: [] for hook in HOOKS}

    def _timed(self, hook: str, call: Any, flow: Any) -> Any:
        started = time.thread_time_ns()
        result = call(flow)
        if not inspect.isawaitable(result):
            self.spent[hook].append(time.thread_time_ns() - started)
            return None
        return self._awaited(hook, result, time.thread_time_ns() - started)

    async def _awaited(self, hook: str, pending: Any, spent: int) -> None:
        started = time.thread_time_ns()
        try:
            await pending
        finally:
            self.spent[hook].append(spent + time.thread_time_ns() - started)

    def _on_requestheaders(self, flow: Any) -> Any:  # the hook, when apim-mi offers it (a body may stream)
        return self._timed("requestheaders", super()._on_requestheaders, flow)

    def request(self, flow: Any) -> Any:
        return self._timed("request", super().request, flow)

    def responseheaders(self, flow: Any) -> Any:
        return self._timed("responseheaders", super().responseheaders, flow)

    def response(self, flow: Any) -> Any:
        return self._timed("response", super().response, flow)

    def done(self) -> Any:
        medians = {hook: statistics.median(v) / 1000 for hook, v in self.spent.items() if v}
        with open(os.environ["APIM_MI_HOOK_TIMES"], "w") as f:
            json.dump({"flows": len(self.spent["request"]), "us": medians, "total_us": sum(medians.values())}, f)
        return super().done()


addons = [TimedApimMi()]
