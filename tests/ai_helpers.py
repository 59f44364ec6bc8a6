"""Reading what the AI-gateway tests' mitmdump recorded: the APIM trace of a response, and its entries by source."""

from __future__ import annotations

from typing import Any

import httpx
from proxy import Mitmdump


def trace_of(md: Mitmdump, resp: httpx.Response) -> dict[str, Any]:
    """The trace the response's ``Ocp-Apim-Trace-Location`` points to (reverse mode: on the proxy itself)."""
    location = resp.headers["Ocp-Apim-Trace-Location"].replace("http://apim-mi.trace", f"{md.url}/apim-mi.trace")
    return httpx.get(location, timeout=10, trust_env=False).json()


def entries(trace: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The data of every entry ``source`` wrote, in every section."""
    return [e["data"] for section in trace["traceEntries"].values() for e in section if e["source"] == source]
