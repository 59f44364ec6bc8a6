"""Request → (API, operation, subscription, product) as APIM's gateway decides it, and APIM's refusals.

1. **API**: the longest API path the request path starts with (on segment boundaries, case-insensitive). Within a
   version set the version comes from the next path segment (Segment), a query parameter (Query) or a header
   (Header); the set's unversioned API takes requests that name no version. ``<path>;rev=N`` reaches a revision
   that is not current.
2. **Operation**: the URL templates of the API's specification; literal segments win over template parameters,
   which win over wildcards, segment by segment; then the method. No operation: APIM's 404.
3. **Subscription**: the key from the API's header or query parameter; missing or not valid for this API: APIM's
   401 bodies. ``subscriptionRequired: false`` APIs are open. The subscription's product is the product scope.

Pure: no mitmproxy, no I/O. The addon turns a flow into a ``GatewayRequest`` and an ``Answer`` into a response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ...policy.context import Api, Headers, Operation, Product, Subscription, SubscriptionKeyParameterNames, Url
from ...rules import Rule
from .instance import Instance
from .model import ApiDef, OperationDef, ProductDef, SubscriptionDef

DEFAULT_GATEWAY_HOSTS = ("*.azure-api.net",)
NOT_FOUND = "Resource not found"
KEY_MISSING = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making "
    "requests to an API."
)
KEY_INVALID = (
    "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
)


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    url: str  # as the client addressed the gateway (scheme://host[:port]/path?query)
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True)
class Answer:
    """The gateway answers itself (404, 401) with APIM's JSON body."""

    status: int
    message: str
    reason: str

    def body(self) -> bytes:
        return json.dumps({"statusCode": self.status, "message": self.message}, indent=4).encode()


@dataclass
class Routed:
    """A request the gateway accepted: the rule (composed policy) to run and the context values to set."""

    rule: Rule
    api: ApiDef
    operation: OperationDef | None
    product: ProductDef | None
    subscription: SubscriptionDef | None
    key: str
    matched: dict[str, str]
    backend_url: Url | None
    service_id: str = ""

    def context_api(self) -> Api:
        a = self.api
        service = Url.parse(a.service_url) if a.service_url else None
        return Api(id=a.name, name=a.display_name, path=a.path, protocols=list(a.protocols), service_url=service,
                   subscription_key_parameter_names=SubscriptionKeyParameterNames(a.key_header, a.key_query),
                   is_current_revision=a.is_current, revision=a.revision, version=a.version or None)  # fmt: skip

    def context_operation(self) -> Operation | None:
        op = self.operation
        return None if op is None else Operation(op.name, op.method, op.display_name, op.url_template)

    def context_product(self) -> Product | None:
        p = self.product
        if p is None:
            return None
        return Product(
            id=p.name,
            name=p.display_name,
            approval_required=p.approval_required,
            state="Published" if p.state.lower() == "published" else "NotPublished",
            subscriptions_limit=p.subscriptions_limit,
            subscription_required=p.subscription_required,
        )

    def context_subscription(self) -> Subscription | None:
        s = self.subscription
        if s is None:
            return None
        keys = [*s.keys, "", ""]
        return Subscription(id=s.name, key=self.key, name=s.display_name, primary_key=keys[0], secondary_key=keys[1])


@dataclass
class _Template:
    operation: OperationDef
    regex: re.Pattern[str]
    query: tuple[tuple[str, str], ...]  # (query parameter, template parameter name or "" for a literal value)
    rank: tuple[int, ...]


_PARAM = re.compile(r"\{([^{}]+)\}")


def _compile(op: OperationDef) -> _Template:
    path, _, query = op.url_template.partition("?")
    path = "/" + path.strip("/") if path.strip("/") else "/"
    pattern, rank = "", []
    for segment in path.strip("/").split("/") if path != "/" else []:
        if segment == "*" or segment.startswith("{*"):
            name = segment[2:-1] if segment.startswith("{*") else ""
            pattern += f"(?:/(?P<{_group(name)}>.*))?" if name else "(?:/.*)?"
            rank.append(2)
            continue
        parts, last, literal = [], 0, True
        for m in _PARAM.finditer(segment):
            parts.append(re.escape(segment[last : m.start()]))
            parts.append(f"(?P<{_group(m.group(1))}>[^/]+)")
            last, literal = m.end(), False
        parts.append(re.escape(segment[last:]))
        pattern += "/" + "".join(parts)
        rank.append(0 if literal else 1)
    regex = re.compile((pattern or "") + r"/?\Z", re.IGNORECASE | re.DOTALL)
    params = []
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        m = _PARAM.fullmatch(value.strip())
        params.append((name, m.group(1) if m else value))
    return _Template(op, regex, tuple(params), tuple(rank))


def _group(name: str) -> str:
    """A regex group name for a template parameter (which may contain '-' or '.')."""
    return "p_" + "".join(c if c.isalnum() else f"_{ord(c):x}_" for c in name)


def _ungroup(group: str) -> str:
    return re.sub(r"_([0-9a-f]+)_", lambda m: chr(int(m.group(1), 16)), group[2:])


class Gateway:
    """Routes requests over one loaded instance; built once per (re)load."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.key_vault: Any = None  # keyvault.KeyVaultValues, made by flows.start on first use
        ext = instance.extraction
        self.hosts = tuple(DEFAULT_GATEWAY_HOSTS) + tuple(instance.overrides.gateway_hosts)
        self._by_path: dict[str, list[ApiDef]] = {}
        for api in ext.apis.values():
            self._by_path.setdefault(api.path.lower(), []).append(api)
        self._templates = {name: sorted((_compile(op) for op in api.operations), key=lambda t: t.rank)
                           for name, api in ext.apis.items()}  # fmt: skip
        self._keys: dict[str, SubscriptionDef] = {}
        for sub in instance.subscriptions.values():
            if sub.state.lower() == "active":
                for key in sub.keys:
                    self._keys.setdefault(key, sub)

    def summary(self) -> str:
        ext = self.instance.extraction
        ops = sum(len(a.operations) for a in ext.apis.values())
        return (
            f"APIM instance from {ext.root}: {len(ext.apis)} API(s), {ops} operation(s), {len(ext.products)} "
            f"product(s); answers for {', '.join(self.hosts)} (forward mode) and every request (reverse mode)"
        )

    def answers(self, host: str) -> bool:
        """Forward mode: is ``host`` one of the instance's gateway hostnames?"""
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def route(self, request: GatewayRequest) -> Routed | Answer:
        url = Url.parse(request.url)
        segments = [unquote(s) for s in url.path.split("/") if s]
        found = self._api(segments, url, request.headers)
        if found is None:
            return Answer(404, NOT_FOUND, "OperationNotFound")
        api, rest = found
        operation, matched = self._operation(api, rest, request.method, url)
        if operation is None and api.spec == "openapi":
            return Answer(404, NOT_FOUND, "OperationNotFound")
        key = request.headers.get(api.key_header) or url.query.get(api.key_query) or ""
        subscription, product = None, None
        if key:
            subscription = self._keys.get(key)
            product = self._product(subscription, api) if subscription is not None else None
            if subscription is None or (
                subscription.scope[0] != "all" and product is None and not self._api_scope(subscription, api)
            ):
                if api.subscription_required:
                    return Answer(401, KEY_INVALID, "SubscriptionKeyInvalid")
                subscription, product = None, None
        elif api.subscription_required:
            return Answer(401, KEY_MISSING, "SubscriptionKeyNotFound")
        rule = self.instance.rule(api, operation, product)
        backend = None
        if api.service_url:
            backend = Url.parse(api.service_url.rstrip("/") + "/" + "/".join(rest))
            backend.query = url.query.copy()
            backend._raw_query, backend._raw_pairs = url._raw_query, url._raw_pairs
        return Routed(
            rule, api, operation, product, subscription, key, matched, backend, self.instance.extraction.service_id
        )

    # -- steps -------------------------------------------------------------------------------------------------

    def _api(self, segments: list[str], url: Url, headers: Headers) -> tuple[ApiDef, list[str]] | None:
        for n in range(len(segments), -1, -1):
            prefix = "/".join(segments[:n]).lower()
            revision = ""
            if ";rev=" in prefix:
                prefix, _, revision = prefix.rpartition(";rev=")
            candidates = self._by_path.get(prefix)
            if not candidates:
                continue
            picked = self._version(candidates, segments[n:], url, headers, revision)
            if picked is not None:
                api, used = picked
                return api, segments[n + used :]
        return None

    def _version(
        self, candidates: list[ApiDef], rest: list[str], url: Url, headers: Headers, revision: str
    ) -> tuple[ApiDef, int] | None:
        """The API among those sharing a path, and how many path segments its version used."""
        apis = [a for a in candidates if (a.revision == revision if revision else a.is_current)]
        unversioned: ApiDef | None = None
        for api in apis:
            vs = api.version_set
            if vs is None or not api.version:
                unversioned = unversioned or api
                continue
            scheme = vs.scheme.lower()
            if scheme == "segment" and rest and rest[0].lower() == api.version.lower():
                return api, 1
            if scheme == "query" and (url.query.get(vs.query_name or "api-version") or "") == api.version:
                return api, 0
            if scheme == "header" and (headers.get(vs.header_name or "Api-Version") or "") == api.version:
                return api, 0
        return (unversioned, 0) if unversioned is not None else None

    def _operation(
        self, api: ApiDef, rest: list[str], method: str, url: Url
    ) -> tuple[OperationDef | None, dict[str, str]]:
        path = "/" + "/".join(rest)
        method = method.upper()
        for template in self._templates.get(api.name, ()):
            if template.operation.method not in (method, "*"):
                continue
            m = template.regex.match(path)
            if m is None or not all(q in url.query for q, _ in template.query):
                continue
            matched = {_ungroup(k): v for k, v in m.groupdict().items() if v is not None}
            for q, name in template.query:
                if name:
                    matched[name] = url.query.get(q) or ""
            return template.operation, matched
        return None, {}

    def _product(self, subscription: SubscriptionDef, api: ApiDef) -> ProductDef | None:
        kind, name = subscription.scope
        if kind != "product":
            return None
        product = self.instance.extraction.products.get(name)
        if product is not None and (api.root_name in product.apis or api.name in product.apis):
            return product
        return None

    @staticmethod
    def _api_scope(subscription: SubscriptionDef, api: ApiDef) -> bool:
        kind, name = subscription.scope
        return kind == "api" and name in (api.name, api.root_name)


def context_values(routed: Routed) -> Mapping[str, object]:
    """What the addon writes into the policy ``context`` (for tests and the trace)."""
    return {
        "api": routed.context_api(),
        "operation": routed.context_operation(),
        "product": routed.context_product(),
        "subscription": routed.context_subscription(),
    }
