"""The "APIM trace" content view: the flow's trace, portal style, in mitmweb and ``mitmdump --flow-detail 3``."""

from __future__ import annotations

from mitmproxy import contentviews, http
from mitmproxy.contentviews import Metadata

from .trace import METADATA_KEY, outline, render


class ApimTraceContentview(contentviews.Contentview):
    """Renders ``flow.metadata['apim_mi']['trace']``; the message body itself is not used."""

    @property
    def name(self) -> str:
        return "APIM trace"

    @property
    def syntax_highlight(self) -> contentviews.SyntaxHighlight:
        return "yaml"

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        flow = metadata.flow
        meta = flow.metadata.get(METADATA_KEY) if flow is not None else None
        if not meta or "trace" not in meta:
            raise ValueError("this flow has no APIM trace (no apim-mi rule matched it)")
        summary = meta.get("summary", {})
        answered = ""
        if isinstance(flow, http.HTTPFlow) and flow.response is not None:
            answered = f"; answered {flow.response.status_code} {flow.response.reason}".rstrip()
        head = [f"apim-mi rule: {summary.get('rule', '?')}", f"outcome: {summary.get('outcome', '?')}{answered}"]
        who = [f"{k}: {summary[k]}" for k in ("identity", "aud") if summary.get(k)]
        if who:
            head.append("   ".join(who))
        head += [f"warning: {w}" for w in summary.get("warnings", [])]
        steps = outline(meta["trace"])
        return "\n".join(head) + "\n\n" + (f"{steps}\n" if steps else "") + render(meta["trace"])

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        """Chosen automatically for responses of traced flows; the request keeps its normal view."""
        flow = metadata.flow
        if isinstance(flow, http.HTTPFlow) and METADATA_KEY in flow.metadata and "trace" in flow.metadata[METADATA_KEY]:
            return 2 if metadata.http_message is flow.response else 0
        return -1


def register_contentview() -> None:
    """Registering twice (script reload) just replaces the view."""
    contentviews.add(ApimTraceContentview())
