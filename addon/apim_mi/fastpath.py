"""The per-flow fast path, for a rule whose whole policy is ``authentication-managed-identity`` into the
Authorization header (what a shorthand rule with the default header becomes).

While such a flow passes, apim-mi does only what the flow needs: the cached token into the header, the header
checked and redacted once the request has left, and a compact record (``Quick``) of what happened and when. The
request id, the summary and the APIM trace are made from that record when something reads them, with the same
helpers the policy engine uses, so every place a user looks shows what the engine path shows.

Anything out of the ordinary leaves the fast path at the point it shows up: no cached token yet (the engine path
fetches it once for all waiters), the trace request headers, a client ``Authorization`` header, a token whose
audience differs from the resource, a destination the token must not go to, an answer that streams or that the
backend refused, a token that did not go out. ``Quick.trace`` then gives the engine's trace up to that point and the
addon carries on with the general path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from . import diagnostics, flowcontext, inspector, streaming
from .policy.statements.core import ADDED, MI, obtained
from .tokens import TokenKey, token_key
from .trace import REDACTED, Trace, later

if TYPE_CHECKING:
    from mitmproxy import http

    from .credentials import CredentialSpec
    from .policy.model import Policy
    from .rules import Rule
    from .tokens import Token

HEADER = "Authorization"
#: What the summary, comment and log line say of a fast-path flow (the engine path's words for it).
OUTCOME = f"token added to {HEADER}"
#: The header's value once the token is taken out of the flow.
REDACTED_VALUE = f"Bearer {REDACTED}"
_NAME = HEADER.encode()
_REDACTED_FIELD = (_NAME, REDACTED_VALUE.encode())
_PLAN = "fastpath"  # its key in ``Policy.compiled``
#: Request headers that need the engine path: a client token the policy replaces (and warns about), and the trace
#: request headers (consumed by the inspector).
_SLOW_HEADERS = frozenset({HEADER.lower().encode(), *inspector.ASK_NAMES})


@dataclass(frozen=True, slots=True)
class Plan:
    """What the policy does, resolved when it is first used: the token's resource and client id, and
    forward-request's timeout (its default: the statement has no attributes)."""

    resource: str
    client_id: str
    timeout: float = 300.0


def plan_of(policy: Policy) -> Plan | None:
    """The policy's ``Plan``, or None when it does anything else (worked out once per policy)."""
    cached = policy.compiled.get(_PLAN)
    if cached is None:
        cached = policy.compiled[_PLAN] = (_plan(policy),)
    return cached[0]  # type: ignore[no-any-return]


def _plan(policy: Policy) -> Plan | None:
    sections = policy.sections
    inbound, backend = sections.get("inbound") or [], sections.get("backend") or []
    if sections.get("outbound") or sections.get("on-error") or policy.api_definition is not None:
        return None
    if len(inbound) != 1 or len(backend) != 1:
        return None
    mi, forward = inbound[0], backend[0]
    if mi.name != MI or mi.children or forward.name != "forward-request" or forward.attrs or forward.children:
        return None
    attrs = mi.attrs
    if not set(attrs) <= {"resource", "client-id", "ignore-error"} or "resource" not in attrs:
        return None
    if any(v.expression is not None for v in attrs.values()):
        return None
    client_id = (mi.attr("client-id") or "").strip()
    if client_id.startswith("@"):  # the engine warns and fails, as APIM does
        return None
    return Plan(attrs["resource"].text or "", client_id)


class Route(NamedTuple):
    """What the fast path needs of a rule, worked out once per rule and credential source (``route``)."""

    rule: Rule
    plan: Plan
    key: TokenKey
    identity: str  # the key's, as the summary, comment and log line name it


def route(rule: Rule, source: str | CredentialSpec) -> Route | None:
    """The rule's ``Route`` under ``source``, or None when the engine path runs it (also for a federated
    credential: two tokens, two trace entries)."""
    plan = plan_of(rule.policy)
    if plan is None:
        return None
    key = token_key(source, plan.client_id, plan.resource)
    return Route(rule, plan, key, key.identity) if key.assertion is None else None


def plain_request(fields: tuple[tuple[bytes, bytes], ...]) -> bool:
    """No request header that needs the engine path."""
    for name, _ in fields:  # noqa: SIM110 (a loop: half the time of all() over a generator)
        if name.lower() in _SLOW_HEADERS:
            return False
    return True


def buffered(response: http.Response | None) -> bool:
    """An answer the fast path can see through: buffered (neither streamed by mitmproxy nor an event stream)."""
    return response is not None and not response.stream and not streaming.is_event_stream(response)


def accepted(response: http.Response | None, echoes: tuple[bytes, ...]) -> bool:
    """An answer with nothing to diagnose: not a 401/403 (the engine path says why the token was refused) and no
    echo of the token (``diagnostics.echoes`` of it: a warning), still buffered."""
    if response is None or response.data.status_code in diagnostics.REJECTIONS or response.stream:
        return False
    return not diagnostics.reflects(flowcontext.content_of(response), echoes)


class Carried(NamedTuple):
    """What the fast path makes of one token, once (``carried``): its header field, and what of it an answer that
    echoes it would show (``diagnostics.echoes``)."""

    token: Token
    field: tuple[bytes, bytes]
    echoes: tuple[bytes, ...]


def carried(token: Token, forms: tuple[bytes, tuple[bytes, ...]] | None = None) -> Carried:
    """The token's ``Carried``, from its ``diagnostics.forms`` (made here when not given: the addon keeps them per
    token, for both paths)."""
    encoded, echoes = forms if forms is not None else diagnostics.forms(token.value)
    return Carried(token, (_NAME, b"Bearer " + encoded), echoes)


def with_token(fields: tuple[tuple[bytes, bytes], ...], field: tuple[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    """``fields`` (with no Authorization header: ``plain_request``) plus the token's ``field``, as the last header."""
    return (*fields, field)


def redacted(sent: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """``with_token``'s result with the token redacted."""
    return (*sent[:-1], _REDACTED_FIELD)


class Quick:
    """What happened to a fast-path flow, and when (``clock()`` values): enough to write its trace later."""

    __slots__ = ("answered", "began", "carried", "checked", "epoch", "forwarded", "received", "response", "route",
                 "seen", "sent_fields")  # fmt: skip

    def __init__(self, route: Route, carried: Carried, began: float, epoch: float, received: float | None,
                 seen: flowcontext.RequestSnapshot) -> None:  # fmt: skip
        self.route = route
        self.carried = carried  # the token, as it went into the header
        self.began = began  # clock() when the policy began
        self.epoch = epoch  # time.time() then
        self.received = received  # the request's timestamp_start
        self.seen = seen  # the request as received
        self.sent_fields: tuple[tuple[bytes, bytes], ...] = ()
        self.forwarded = began  # clock() when the token was in the request
        self.answered: float | None = None  # clock() when the answer was complete
        self.response: tuple[int, bytes, tuple[tuple[bytes, bytes], ...]] | None = None
        self.checked = False  # the request left with the token, and the flow no longer holds it

    def went_out(self, request: http.Request) -> bool:
        """The request's headers are the ones the fast path wrote: the token went upstream, nothing changed since."""
        return request.data.headers.fields is self.sent_fields

    def sent(self) -> flowcontext.RequestSnapshot:
        """The request as it went upstream: as received, plus the token."""
        return self.seen.with_fields(self.sent_fields)

    def trace(self, trace_id: str) -> Trace:
        """The engine path's trace of this flow: the request and configuration, the token obtained and added,
        the request forwarded, and the answer once there was one."""
        trace = Trace.began(trace_id, self.received, self.epoch, self.began)
        token = self.carried.token
        trace.secrets.add(token.value)
        at, seen, route = self.began, self.seen, self.route
        trace.add_at(at, "inbound", "api-inspector", later(inspector.request_seen, seen.data))
        trace.add_at(at, "inbound", "api-inspector", later(inspector.configuration_seen, route.rule, seen.data))
        at = self.forwarded
        trace.add_at(at, "inbound", MI, obtained(route.key, token.claims, True))
        trace.add_at(at, "inbound", MI, dict(ADDED))
        trace.add_at(at, "backend", "forward-request", later(
            inspector.forward_seen, route.plan.timeout, self.sent().data, (token.value,)))  # fmt: skip
        if self.answered is not None and self.response is not None:
            trace.add_at(self.answered, "backend", "forward-request",
                         later(inspector.response_entry, *self.response))  # fmt: skip
            trace.add_at(self.answered, "outbound", "transfer-response", inspector.SENT_IN_FULL)
        return trace

