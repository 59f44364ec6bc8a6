"""The garbage collector's own CPU time inside a live mitmdump, per flow and by generation (``gc.callbacks``).

Load it beside the addon (``mitmdump -s bench/gcstats.py -s addon/mi.py …``) with ``GCSTATS_OUT=<file>``; every 500
answered flows (``GCSTATS_EVERY``) it writes ``{flows, gc_us, per_flow_us, collections, us_by_gen, frozen}`` there.
Used by hand, to see what a flow's objects cost the collector beyond the hooks' own time (``bench/timed.py``)."""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

from mitmproxy import http


class GcStats:
    def __init__(self) -> None:
        self.flows = 0
        self.total_ns = 0
        self.collections = [0, 0, 0]
        self.ns_by_gen = [0, 0, 0]
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time_ns()
            return
        spent = time.thread_time_ns() - self._started
        generation = info["generation"]
        self.total_ns += spent
        self.collections[generation] += 1
        self.ns_by_gen[generation] += spent

    def response(self, flow: http.HTTPFlow) -> None:
        self.flows += 1
        if self.flows % int(os.environ.get("GCSTATS_EVERY", "500")) == 0 and (out := os.environ.get("GCSTATS_OUT")):
            with open(out, "w") as f:
                json.dump({"flows": self.flows, "gc_us": self.total_ns / 1000,
                           "per_flow_us": self.total_ns / 1000 / self.flows, "collections": self.collections,
                           "us_by_gen": [ns / 1000 for ns in self.ns_by_gen], "frozen": gc.get_freeze_count()}, f)


addons = [GcStats()]
