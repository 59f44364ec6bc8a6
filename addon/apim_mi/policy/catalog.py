"""What APIM's policy reference says about each policy element, as data (research/apim.md §1.4, §2, §3).

The loader validates documents against it, the engine reads attribute defaults from it (``default_of``), and the docs
are generated from it, so the three never disagree. A policy that is not listed here still loads (it fails when
executed); one that is listed with ``supported=False`` loads with section checks only.

Shape::

    CATALOG: Mapping[str, ElementSpec]           # top-level policies by element name
    ElementSpec(name, sections, attributes: {name: AttributeSpec}, body, children: (ChildSpec, ...), ordered, ...)
    AttributeSpec(name, required, default, expressions, datatype, choices)
    ChildSpec(spec: ElementSpec, min, max)       # structured child elements (send-request's set-url, <value>, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from .model import SECTIONS

ALL_SECTIONS: frozenset[str] = frozenset(SECTIONS)
INBOUND = frozenset({"inbound"})
NOT_ON_ERROR = frozenset({"inbound", "backend", "outbound"})

#: APIM's list of policies allowed in on-error (apim.md §1.4). ``base`` and ``include-fragment`` go anywhere.
ON_ERROR_ALLOWED: frozenset[str] = frozenset(
    {
        "choose", "set-variable", "find-and-replace", "return-response", "set-header", "set-method", "set-status",
        "send-request", "send-one-way-request", "log-to-eventhub", "json-to-xml", "xml-to-json", "limit-concurrency",
        "mock-response", "retry", "trace", "base", "include-fragment",
    }
)  # fmt: skip

#: Policies whose documented sections the loader enforces. Elsewhere a policy outside its documented sections only
#: warns: the gateway accepts more than the reference pages list (the on-error list omits set-body, which the APIM
#: team's "Deep dive on set-body policy" uses there; deployed AI-gateway policies run authentication-managed-identity
#: in outbound). forward-request is the backend call itself, which only the backend section makes.
SECTIONS_ENFORCED: frozenset[str] = frozenset({"forward-request"})

XSD = "http://www.w3.org/2001/XMLSchema"


class Datatype(StrEnum):
    STRING = "string"
    INT = "int"
    BOOL = "boolean"
    ENUM = "enum"


class Body(StrEnum):
    """What may sit between an element's tags."""

    EMPTY = "empty"  # nothing (whitespace and comments only)
    TEXT = "text"  # a value: literal text, or an expression when ``text_expressions``
    ELEMENTS = "elements"  # the structured children listed in ``children``
    STATEMENTS = "statements"  # policy statements, checked against the enclosing section (when, otherwise, retry)
    ANY = "any"  # not described (unsupported policies): anything loads


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute as the policy reference describes it."""

    name: str
    required: bool = False
    default: str | None = None
    expressions: bool = True
    datatype: Datatype = Datatype.STRING
    choices: tuple[str, ...] = ()  # for ENUM, compared case-insensitively
    doc: str = ""
    maximum: int | None = None  # for INT: the largest value the reference allows

    def check_literal(self, value: str) -> str | None:
        """APIM's datatype complaint about a literal value, or None when it is fine."""
        v = value.strip()
        if self.datatype is Datatype.INT:
            try:
                number = int(v)
            except ValueError:
                return (
                    f"The '{self.name}' attribute is invalid - The value '{value}' is invalid according to its "
                    f"datatype '{XSD}:int' - The string '{value}' is not a valid Int32 value."
                )
            if self.maximum is not None and number > self.maximum:
                return (
                    f"The '{self.name}' attribute is invalid - The value '{value}' is invalid according to its "
                    f"datatype - The MaxInclusive constraint failed ({self.maximum})."
                )
        elif self.datatype is Datatype.BOOL:
            if v.lower() not in ("true", "false"):
                return (
                    f"The '{self.name}' attribute is invalid - The value '{value}' is invalid according to its "
                    f"datatype '{XSD}:boolean' - The string '{value}' is not a valid Boolean value."
                )
        elif self.datatype is Datatype.ENUM and v.lower() not in self.choices:
            allowed = ", ".join(f"'{c}'" for c in self.choices)
            return (
                f"The '{self.name}' attribute is invalid - The value '{value}' is invalid according to its datatype "
                f"- The Enumeration constraint failed. Allowed values: {allowed}."
            )
        return None


@dataclass(frozen=True)
class ChildSpec:
    spec: ElementSpec
    min: int = 0
    max: int | None = 1

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ElementSpec:
    """A policy (or a child element of one)."""

    name: str
    sections: frozenset[str] = ALL_SECTIONS
    attributes: Mapping[str, AttributeSpec] = field(default_factory=dict)
    body: Body = Body.EMPTY
    text_expressions: bool = True
    markup_text: bool = False  # set-body: child elements are the body's own XML (Liquid templates)
    legacy_text: bool = False  # ELEMENTS body that may instead be plain text (old trace syntax)
    children: tuple[ChildSpec, ...] = ()
    ordered: bool = False
    one_of: tuple[tuple[str, ...], ...] = ()  # groups where exactly one attribute must be present
    closed: bool = True  # undeclared attributes are errors
    supported: bool = True  # the engine runs it
    summary: str = ""
    limits: str = ""  # what apim-mi does differently or infers (docs/policies.md)

    def attribute(self, name: str) -> AttributeSpec | None:
        return self.attributes.get(name)

    def child(self, name: str) -> ChildSpec | None:
        return next((c for c in self.children if c.name == name), None)


def _attrs(*specs: AttributeSpec) -> Mapping[str, AttributeSpec]:
    return MappingProxyType({s.name: s for s in specs})


def _bool(name: str, default: str | None = "false", *, expressions: bool = False, doc: str = "") -> AttributeSpec:
    return AttributeSpec(name, default=default, expressions=expressions, datatype=Datatype.BOOL, doc=doc)


def _int(name: str, default: str | None = None, *, expressions: bool = True, required: bool = False,
         maximum: int | None = None) -> AttributeSpec:  # fmt: skip
    return AttributeSpec(name, required=required, default=default, expressions=expressions, datatype=Datatype.INT,
                         maximum=maximum)  # fmt: skip


def _enum(name: str, choices: tuple[str, ...], default: str | None, *, expressions: bool = True) -> AttributeSpec:
    return AttributeSpec(name, default=default, expressions=expressions, datatype=Datatype.ENUM, choices=choices)


EXISTS_ACTIONS = ("override", "skip", "append", "delete")
DAPR_REASON = "Needs the Dapr sidecar of a self-hosted gateway; there is no Dapr runtime on the proxy's machine."

VALUE = ElementSpec("value", body=Body.TEXT)

# --- children shared by send-request / return-response ------------------------------------------------------------

SET_HEADER = ElementSpec(
    "set-header",
    attributes=_attrs(
        AttributeSpec("name", required=True),
        _enum("exists-action", EXISTS_ACTIONS, "override"),
    ),
    body=Body.ELEMENTS,
    children=(ChildSpec(VALUE, max=None),),
    summary="Sets, appends, skips or deletes an HTTP header of the request (inbound/backend) or response.",
)
SET_BODY = ElementSpec(
    "set-body",
    sections=ALL_SECTIONS,  # on-error too: the APIM team's "Deep dive on set-body policy" (deployed policies do)
    attributes=_attrs(
        _enum("template", ("liquid", "none"), "none", expressions=False),
        _enum("xsi-nil", ("blank", "null"), "blank", expressions=False),
        _bool("parse-date", "true"),
    ),
    body=Body.TEXT,
    markup_text=True,
    summary="Sets the message body (literal, expression, or Liquid template).",
)
SET_STATUS = ElementSpec(
    "set-status",
    attributes=_attrs(_int("code", required=True), AttributeSpec("reason")),
    summary="Sets the HTTP status code and reason.",
)
SET_METHOD = ElementSpec(
    "set-method",
    sections=frozenset({"inbound", "on-error"}),
    body=Body.TEXT,
    text_expressions=True,
    summary="Sets the HTTP method.",
)
SET_URL = ElementSpec("set-url", body=Body.TEXT, summary="The side request's absolute URL.")
AUTH_MI = ElementSpec(
    "authentication-managed-identity",
    sections=INBOUND,
    attributes=_attrs(
        AttributeSpec("resource", required=True, doc="Application ID URI / resource of the target API."),
        AttributeSpec("client-id", expressions=False, doc="User-assigned identity; absent = system-assigned."),
        AttributeSpec("output-token-variable-name", expressions=False),
        _bool("ignore-error", "false"),
        AttributeSpec("authentication-provider", expressions=False),
    ),
    summary="Gets a Microsoft Entra token with the managed identity and sets Authorization: Bearer.",
)
AUTH_CERT = ElementSpec(
    "authentication-certificate",
    sections=INBOUND,
    attributes=_attrs(
        AttributeSpec("thumbprint"), AttributeSpec("certificate-id"), AttributeSpec("body"), AttributeSpec("password")
    ),
    summary="Selects the TLS client certificate for the backend connection.",
    limits="`certificate-id`/`thumbprint` name a PEM (certificate + key) or PFX file under the rules file's "
    "`certificates:`; `body` takes a PFX byte[]. Presented on the forwarded request's upstream TLS connection "
    "(mitmproxy's `connection_strategy` is set to `lazy` so it opens after the policy ran) or on send-request's.",
)
PROXY = ElementSpec(
    "proxy",
    sections=INBOUND,
    attributes=_attrs(AttributeSpec("url", required=True), AttributeSpec("username"), AttributeSpec("password")),
    summary="Routes side requests (and backend calls apim-mi makes) through an HTTP proxy.",
    limits="Applies to send-request, send-one-way-request and the backend calls apim-mi makes itself; a request "
    "mitmproxy forwards keeps mitmproxy's own upstream settings.",
)

SEND_REQUEST = ElementSpec(
    "send-request",
    attributes=_attrs(
        _enum("mode", ("new", "copy"), "new"),
        AttributeSpec("response-variable-name"),
        _int("timeout", "60"),
        _bool("ignore-error", "false"),
    ),
    body=Body.ELEMENTS,
    children=(
        ChildSpec(SET_URL),
        ChildSpec(SET_METHOD),
        ChildSpec(SET_HEADER, max=None),
        ChildSpec(SET_BODY),
        ChildSpec(AUTH_CERT),
        ChildSpec(AUTH_MI),
        ChildSpec(PROXY),
    ),
    ordered=True,  # "Set the policy's elements and child elements in the order provided in the policy statement"
    summary="Sends a side request and stores the IResponse in a context variable.",
)

RETURN_RESPONSE = ElementSpec(
    "return-response",
    attributes=_attrs(AttributeSpec("response-variable-name", expressions=False)),
    body=Body.ELEMENTS,
    children=(ChildSpec(SET_STATUS), ChildSpec(SET_HEADER, max=None), ChildSpec(SET_BODY)),
    summary="Stops the pipeline and returns a response to the caller.",
)

WHEN = ElementSpec(
    "when",
    attributes=_attrs(AttributeSpec("condition", required=True, datatype=Datatype.BOOL)),
    body=Body.STATEMENTS,
)
OTHERWISE = ElementSpec("otherwise", body=Body.STATEMENTS)
CHOOSE = ElementSpec(
    "choose",
    body=Body.ELEMENTS,
    children=(ChildSpec(WHEN, min=1, max=None), ChildSpec(OTHERWISE)),
    ordered=True,
    summary="Runs the statements of the first <when> whose condition is true, else <otherwise>.",
)

TRACE = ElementSpec(
    "trace",
    sections=ALL_SECTIONS,  # the trace page says inbound/outbound/backend; the on-error page lists it too
    attributes=_attrs(
        AttributeSpec("source", required=True, expressions=False),
        _enum("severity", ("verbose", "information", "error"), "verbose", expressions=False),
    ),
    body=Body.ELEMENTS,
    legacy_text=True,  # the older form: <trace source="x">message text or expression</trace>
    children=(
        ChildSpec(ElementSpec("message", body=Body.TEXT)),
        ChildSpec(ElementSpec("metadata", attributes=_attrs(AttributeSpec("name"), AttributeSpec("value"))), max=None),
    ),
    summary="Adds a custom entry to the request trace.",
)

CHECK_HEADER = ElementSpec(
    "check-header",
    sections=INBOUND,
    attributes=_attrs(
        AttributeSpec("name", required=True),
        _int("failed-check-httpcode", required=True),
        AttributeSpec("failed-check-error-message", required=True),
        AttributeSpec("ignore-case", required=True, datatype=Datatype.BOOL),
    ),
    body=Body.ELEMENTS,
    children=(ChildSpec(VALUE, max=None),),
    summary="Rejects the request unless a header is present (with one of the listed values).",
)

CLAIM = ElementSpec(
    "claim",
    attributes=_attrs(
        AttributeSpec("name", required=True),
        _enum("match", ("all", "any"), "all"),
        AttributeSpec("separator"),
    ),
    body=Body.ELEMENTS,
    children=(ChildSpec(VALUE, max=None),),
)


def _list(name: str, item: ElementSpec) -> ElementSpec:
    return ElementSpec(name, body=Body.ELEMENTS, children=(ChildSpec(item, max=None),))


VALIDATE_JWT = ElementSpec(
    "validate-jwt",
    sections=INBOUND,
    attributes=_attrs(
        AttributeSpec("header-name"),
        AttributeSpec("query-parameter-name"),
        AttributeSpec("token-value"),
        _int("failed-validation-httpcode", "401"),
        AttributeSpec("failed-validation-error-message"),
        _bool("require-expiration-time", "true", expressions=True),
        AttributeSpec("require-scheme"),
        _bool("require-signed-tokens", "true", expressions=True),
        _int("clock-skew", "0"),
        AttributeSpec("output-token-variable-name", expressions=False),
    ),
    one_of=(("header-name", "query-parameter-name", "token-value"),),
    body=Body.ELEMENTS,
    children=(
        ChildSpec(
            ElementSpec(
                "openid-config",
                attributes=_attrs(AttributeSpec("url", required=True), _bool("validate-connectivity", None)),
            ),
            max=None,
        ),
        ChildSpec(
            _list(
                "issuer-signing-keys",
                ElementSpec(
                    "key",
                    attributes=_attrs(
                        AttributeSpec("id"), AttributeSpec("certificate-id"), AttributeSpec("n"), AttributeSpec("e")
                    ),
                    body=Body.TEXT,
                ),
            )
        ),
        ChildSpec(_list("decryption-keys", ElementSpec("key", closed=False, body=Body.TEXT))),
        ChildSpec(_list("audiences", ElementSpec("audience", body=Body.TEXT))),
        ChildSpec(_list("issuers", ElementSpec("issuer", body=Body.TEXT))),
        ChildSpec(_list("required-claims", CLAIM)),
    ),
    summary="Validates a JWT in the request (signature via OpenID config/JWKS or keys, audience, issuer, claims).",
)

DIMENSION = ElementSpec("dimension", attributes=_attrs(AttributeSpec("name", required=True), AttributeSpec("value")))
_PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")


def _token_limit(name: str) -> ElementSpec:
    return ElementSpec(
        name,
        sections=INBOUND,
        attributes=_attrs(
            AttributeSpec("counter-key", required=True),
            _int("tokens-per-minute"),
            _int("token-quota", expressions=False),
            _enum("token-quota-period", _PERIODS, None, expressions=False),
            AttributeSpec("estimate-prompt-tokens", datatype=Datatype.BOOL, default="false"),
            *(
                AttributeSpec(n, expressions=False)
                for n in (
                    "retry-after-header-name",
                    "retry-after-variable-name",
                    "remaining-quota-tokens-header-name",
                    "remaining-quota-tokens-variable-name",
                    "remaining-tokens-header-name",
                    "remaining-tokens-variable-name",
                    "tokens-consumed-header-name",
                    "tokens-consumed-variable-name",
                )
            ),
        ),
        summary="Limits language-model tokens per key: 429 over tokens-per-minute, 403 over token-quota.",
    )


def _token_metric(name: str) -> ElementSpec:
    return ElementSpec(
        name,
        sections=INBOUND,
        attributes=_attrs(AttributeSpec("namespace", expressions=False), AttributeSpec("value")),
        body=Body.ELEMENTS,
        children=(ChildSpec(DIMENSION, max=None),),
        summary="Emits Total/Prompt/Completion Tokens metrics (from the response usage) with dimensions.",
    )


def _semantic_lookup(name: str) -> ElementSpec:
    return ElementSpec(
        name,
        sections=INBOUND,
        attributes=_attrs(
            AttributeSpec("score-threshold", required=True),
            AttributeSpec("embeddings-backend-id", required=True),
            AttributeSpec("embeddings-backend-auth", expressions=False),
            _bool("ignore-system-messages", "false", expressions=True),
            _int("max-message-count"),
        ),
        body=Body.ELEMENTS,
        children=(ChildSpec(ElementSpec("vary-by", body=Body.TEXT), max=None),),
        summary="Answers from the semantic cache when a cached prompt's embedding is within score-threshold.",
    )


def _semantic_store(name: str) -> ElementSpec:
    return ElementSpec(
        name,
        sections=frozenset({"outbound"}),
        attributes=_attrs(_int("duration", required=True)),
        summary="Stores the response in the semantic cache for duration seconds.",
    )


CONTENT_SAFETY = ElementSpec(
    "llm-content-safety",
    sections=frozenset({"inbound", "outbound"}),
    attributes=_attrs(
        AttributeSpec("backend-id", required=True), _bool("shield-prompt", "false", expressions=True),
        _bool("enforce-on-completions", "false", expressions=True), _int("window-size"), _int("window-overlap-size"),
    ),
    body=Body.ELEMENTS,
    children=(
        ChildSpec(
            ElementSpec(
                "categories",
                attributes=_attrs(
                    _enum("output-type", ("fourseveritylevels", "eightseveritylevels"), "FourSeverityLevels")
                ),
                body=Body.ELEMENTS,
                children=(
                    ChildSpec(
                        ElementSpec(
                            "category",
                            attributes=_attrs(AttributeSpec("name", required=True), _int("threshold", required=True)),
                        ),
                        max=None,
                    ),
                ),
            )
        ),
        ChildSpec(
            ElementSpec(
                "blocklists", body=Body.ELEMENTS, children=(ChildSpec(ElementSpec("id", body=Body.TEXT), max=None),)
            )
        ),
    ),
    summary="Checks the prompt with Azure AI Content Safety; 403 when a category or blocklist hits.",
)

AI_POLICIES: tuple[ElementSpec, ...] = (
    _token_limit("azure-openai-token-limit"),
    _token_limit("llm-token-limit"),
    _token_metric("azure-openai-emit-token-metric"),
    _token_metric("llm-emit-token-metric"),
    ElementSpec(
        "emit-metric",
        attributes=_attrs(
            AttributeSpec("name", required=True), AttributeSpec("namespace", expressions=False), AttributeSpec("value")
        ),
        body=Body.ELEMENTS,
        children=(ChildSpec(DIMENSION, max=None),),
        summary="Emits a custom metric with dimensions.",
    ),
    CONTENT_SAFETY,
    _semantic_lookup("azure-openai-semantic-cache-lookup"),
    _semantic_lookup("llm-semantic-cache-lookup"),
    _semantic_store("azure-openai-semantic-cache-store"),
    _semantic_store("llm-semantic-cache-store"),
)

_SUPPORTED: tuple[ElementSpec, ...] = (
    AUTH_MI,
    SET_HEADER,
    ElementSpec(
        "set-variable",
        attributes=_attrs(
            AttributeSpec("name", required=True, expressions=False), AttributeSpec("value", required=True)
        ),
        summary="Stores a value (literal = string) in context.Variables.",
    ),
    CHOOSE,
    SEND_REQUEST,
    RETURN_RESPONSE,
    ElementSpec(
        "set-backend-service",
        sections=frozenset({"inbound", "backend"}),
        attributes=_attrs(
            AttributeSpec("base-url"),
            AttributeSpec("backend-id"),
            AttributeSpec("sf-resolve-condition"),
            AttributeSpec("sf-service-instance-name"),
            AttributeSpec("sf-partition-key"),
            AttributeSpec("sf-listener-name"),
            *(AttributeSpec(n) for n in ("dapr-app-id", "dapr-method", "dapr-namespace")),
        ),
        one_of=(("base-url", "backend-id"),),
        summary="Changes the backend base URL of the request.",
        limits="The Dapr form (`backend-id=\"dapr\"`, `dapr-app-id`) fails loudly: " + DAPR_REASON,
    ),
    ElementSpec(
        "forward-request",
        sections=frozenset({"backend"}),
        attributes=_attrs(
            _int("timeout", "300"),
            _int("timeout-ms"),
            _int("continue-timeout"),
            _enum("http-version", ("1", "2or1", "2"), "1", expressions=False),
            _bool("follow-redirects", "false", expressions=True),
            _bool("buffer-request-body", "false"),
            _bool("buffer-response", "true"),
            _bool("fail-on-error-status-code", "false"),
        ),
        summary="Sends the request to the backend; without it (through <base/>) the backend is not called.",
    ),
    CHECK_HEADER,
    TRACE,
    ElementSpec(
        "authentication-basic",
        sections=INBOUND,
        attributes=_attrs(AttributeSpec("username", required=True), AttributeSpec("password", required=True)),
        summary="Sets Authorization: Basic base64(username:password).",
    ),
    ElementSpec(
        "set-query-parameter",
        sections=frozenset({"inbound", "backend"}),
        attributes=_attrs(AttributeSpec("name", required=True), _enum("exists-action", EXISTS_ACTIONS, "override")),
        body=Body.ELEMENTS,
        children=(ChildSpec(VALUE, max=None),),
        summary="Sets, appends, skips or deletes a query string parameter.",
    ),
    ElementSpec(
        "rewrite-uri",
        sections=INBOUND,
        attributes=_attrs(AttributeSpec("template", required=True), _bool("copy-unmatched-params", "true")),
        summary="Rewrites the request URL path and query from a template.",
    ),
    VALIDATE_JWT,
    ElementSpec(
        "include-fragment",
        attributes=_attrs(AttributeSpec("fragment-id", required=True, expressions=False)),
        summary="Inserts a policy fragment (expanded when the policy is loaded).",
    ),
    ElementSpec("base", summary="The parent scope's statements of this section go here."),
    SET_STATUS,
    SET_BODY,
    SET_METHOD,
    ElementSpec(
        "mock-response",
        sections=frozenset({"inbound", "outbound", "on-error"}),
        attributes=_attrs(_int("status-code", "200", expressions=False), AttributeSpec("content-type")),
        summary="Returns a mocked response.",
        limits="Answers with the example the rule's `openapi:` document gives for the matched operation, status code "
        "and content type (`example`, the first of `examples`, or the schema's `example`); without a definition or "
        "example the body is empty.",
    ),
    AUTH_CERT,
    PROXY,
)


# --- caching, limits, retry and backends, side effects (policy/statements/caching, limits, backends, effects) -----

CACHING_TYPES = ("internal", "external", "prefer-external")
_CACHING_TYPE = _enum("caching-type", CACHING_TYPES, "prefer-external")
_TEXT_LIST = Body.ELEMENTS


RATE_LIMIT_MAX_PERIOD = 300  # rate-limit(-by-key) renewal-period: "Maximum allowed value: 300 seconds."
FIRST_PERIOD_START = "0001-01-01T00:00:00Z"  # quota-by-key's documented default


def _limit(name: str, *extra: AttributeSpec, expressions: bool = True, children: tuple[ChildSpec, ...] = (),
           max_period: int | None = None, summary: str = "", limits: str = "") -> ElementSpec:  # fmt: skip
    """rate-limit / quota and their -by-key forms: calls, renewal-period and the headers/variables they report."""
    return ElementSpec(
        name,
        sections=INBOUND,
        attributes=_attrs(
            _int("calls", expressions=expressions),
            _int("renewal-period", expressions=expressions, maximum=max_period),
            *extra,
        ),
        body=Body.ELEMENTS if children else Body.EMPTY,
        children=children,
        summary=summary,
        limits=limits,
    )


_RATE_HEADERS = (
    AttributeSpec("retry-after-header-name", expressions=False),
    AttributeSpec("retry-after-variable-name", expressions=False),
    AttributeSpec("remaining-calls-header-name", expressions=False),
    AttributeSpec("remaining-calls-variable-name", expressions=False),
    AttributeSpec("total-calls-header-name", expressions=False),
)
_BY_KEY = (
    AttributeSpec("counter-key", required=True),
    AttributeSpec("increment-condition", datatype=Datatype.BOOL),
    _int("increment-count", "1"),
)


def _scoped_limits() -> tuple[ChildSpec, ...]:
    """rate-limit / quota's <api name|id calls renewal-period><operation …/></api> children."""
    attrs = _attrs(AttributeSpec("name", expressions=False), AttributeSpec("id", expressions=False),
                   _int("calls", expressions=False), _int("renewal-period", expressions=False),
                   _int("bandwidth", expressions=False))  # fmt: skip
    operation = ElementSpec("operation", attributes=attrs)
    return (ChildSpec(ElementSpec("api", attributes=attrs, body=Body.ELEMENTS,
                                  children=(ChildSpec(operation, max=None),)), max=None),)  # fmt: skip


_RUNTIME: tuple[ElementSpec, ...] = (
    ElementSpec(
        "cache-lookup",
        sections=INBOUND,
        attributes=_attrs(
            _bool("vary-by-developer", "false", expressions=True),
            _bool("vary-by-developer-groups", "false", expressions=True),
            _CACHING_TYPE,
            _enum("downstream-caching-type", ("none", "private", "public"), "none"),
            _bool("must-revalidate", "true", expressions=True),
            _bool("allow-private-response-caching", "false", expressions=True),
        ),
        body=_TEXT_LIST,
        children=(ChildSpec(ElementSpec("vary-by-header", body=Body.TEXT), max=None),
                  ChildSpec(ElementSpec("vary-by-query-parameter", body=Body.TEXT), max=None)),
        summary="Answers a GET from the response cache (varying by query, headers, developer, groups).",
        limits=(
            "In-process store for every caching-type (the trace says so); GET only; the key is method, host, "
            "path, the named query parameters (all when none is named), the named headers, and the developer "
            "(user, else subscription) / groups when asked; a hit answers at once (Age, downstream Cache-Control)"
            " and skips backend and outbound (inferred)."
        ),
    ),
    ElementSpec(
        "cache-store",
        sections=frozenset({"outbound"}),
        attributes=_attrs(_int("duration"), _bool("cache-response", "false", expressions=True)),
        summary="Stores the response for the key cache-lookup computed.",
        limits='200 responses only unless cache-response="true"; duration defaults to 3600 s when absent.',
    ),
    ElementSpec(
        "cache-lookup-value",
        attributes=_attrs(AttributeSpec("key", required=True), AttributeSpec("default-value"),
                          AttributeSpec("variable-name", required=True, expressions=False), _CACHING_TYPE),
        summary="Reads a cached value into a context variable.",
        limits=(
            "In-process store with TTL shared by all flows and rules; a miss leaves the variable unset unless "
            "default-value is given."
        ),
    ),
    ElementSpec(
        "cache-store-value",
        attributes=_attrs(AttributeSpec("key", required=True), AttributeSpec("value", required=True),
                          AttributeSpec("duration", required=True), _CACHING_TYPE),  # duration: int, checked when run
        summary="Stores a value in the cache for a duration in seconds.",
        limits=(
            "The value is kept as the expression returned it (no serialisation); "
            "internal/external/prefer-external share one store."
        ),
    ),
    ElementSpec(
        "cache-remove-value",
        attributes=_attrs(AttributeSpec("key", required=True), _CACHING_TYPE),
        summary="Removes a value from the cache.",
        limits="The in-process store every caching-type shares.",
    ),
    _limit(
        "rate-limit", *_RATE_HEADERS, expressions=False, children=_scoped_limits(), max_period=RATE_LIMIT_MAX_PERIOD,
        summary="Limits calls per subscription in a renewal period (429 + Retry-After).",
        limits="A sliding window of renewal-period seconds (at most 300, as APIM allows), counted per subscription "
        "(Ocp-Apim-Subscription-Key or subscription-key; declared under subscriptions:, else named after the key; "
        "requests without a key share one counter); api/operation children count separately. 429 `Rate limit is "
        "exceeded. Try again in N seconds.` with Retry-After, LastError RateLimitExceeded.",
    ),
    _limit(
        "rate-limit-by-key", *_RATE_HEADERS, *_BY_KEY, max_period=RATE_LIMIT_MAX_PERIOD,
        summary="Limits calls per counter key (429 + Retry-After).",
        limits="As rate-limit, per counter-key; a renewal-period over 300 s is refused when loaded (an expression: "
        "when run, ExpressionValueEvaluationFailure); increment-condition and an increment-count expression are "
        "evaluated, and the counter incremented, when the request is over (on the final response), as APIM "
        "documents; retry-after-header-name replaces Retry-After.",
    ),
    _limit(
        "quota", _int("bandwidth", expressions=False), expressions=False, children=_scoped_limits(),
        summary="Call and bandwidth (KB) volume per subscription in a renewal period (403).",
        limits="Fixed windows aligned, as APIM's, on 0001-01-01T00:00:00Z (UTC wall clock): a 3600 s period renews "
        "on the hour, not an hour after the first call; 403 `Out of call volume quota. Quota will be replenished in "
        "hh:mm:ss.` (or bandwidth), LastError QuotaExceeded; bandwidth counts request and response bodies.",
    ),
    _limit(
        "quota-by-key", _int("bandwidth"), *_BY_KEY,
        AttributeSpec("first-period-start", default=FIRST_PERIOD_START, expressions=False),
        summary="Call and bandwidth (KB) volume per counter key in a renewal period (403).",
        limits="As quota, per counter-key; periods start at first-period-start (ISO 8601, UTC when it names no "
        "offset) plus whole renewal periods.",
    ),
    ElementSpec(
        "limit-concurrency",
        attributes=_attrs(AttributeSpec("key", required=True), _int("max-count", required=True, expressions=False)),
        body=Body.STATEMENTS,
        summary="Runs its statements only while fewer than max-count requests with the key are in flight (429).",
        limits="Per proxy process; the 429 body `Too many requests` is inferred.",
    ),
    ElementSpec(
        "retry",
        attributes=_attrs(
            AttributeSpec("condition", required=True, datatype=Datatype.BOOL),
            _int("count", required=True),
            _int("interval", required=True),
            _int("max-interval"),
            _int("delta"),
            _bool("first-fast-retry", "false", expressions=True),
        ),
        body=Body.STATEMENTS,
        summary="Runs its statements, then again while the condition holds (up to count retries).",
        limits=(
            "A forward-request inside makes apim-mi call the backend itself (aiohttp) for every attempt; fixed, "
            "linear and exponential (±20 % jitter) intervals; a failure that carries a response (pool "
            "unavailable) is retried like a response, other errors end the retry."
        ),
    ),
    ElementSpec(
        "wait",
        sections=NOT_ON_ERROR,
        attributes=_attrs(_enum("for", ("all", "any"), "all", expressions=False)),
        body=Body.STATEMENTS,
        summary="Runs its statements concurrently and waits for all or any of them.",
        limits='With for="any" the unfinished children are cancelled.',
    ),
    ElementSpec(
        "send-one-way-request",
        attributes=_attrs(_enum("mode", ("new", "copy"), "new"), _int("timeout", "60")),
        body=Body.ELEMENTS,
        children=SEND_REQUEST.children,
        ordered=True,
        summary="Sends a side request and does not wait for its answer.",
        limits="aiohttp in the background; the answer or failure goes to the event log only.",
    ),
    ElementSpec(
        "jsonp",
        sections=frozenset({"outbound"}),
        attributes=_attrs(AttributeSpec("callback-parameter-name", required=True)),
        summary="Wraps a JSON response in the callback the request's query names (JSONP).",
        limits="`callback(body);` with Content-Type application/javascript (inferred); a callback that is not a "
        "(dotted) JavaScript identifier answers 400 with LastError CallbackParameterInvalid (APIM's message).",
    ),
    ElementSpec(
        "cross-domain",
        sections=INBOUND,
        body=Body.TEXT,
        text_expressions=False,
        markup_text=True,
        summary="Serves the Flash (crossdomain.xml) / Silverlight (clientaccesspolicy.xml) policy document.",
        limits="A GET for a path ending in /crossdomain.xml (with a <cross-domain-policy>) or /clientaccesspolicy.xml "
        "(with an <access-policy>) is answered with the document as text/xml (inferred); other requests go on.",
    ),
    ElementSpec(
        "log-to-eventhub",
        attributes=_attrs(AttributeSpec("logger-id", required=True, expressions=False),
                          AttributeSpec("partition-id", expressions=False), AttributeSpec("partition-key")),
        body=Body.TEXT,
        summary="Sends a message to an Event Hub logger (locally: a JSON-lines file, else the event log).",
        limits=(
            "One JSON object per line (timestamp, loggerId, partitionId, partitionKey, requestId, message) in the"
            " file named under loggers:, else an event-log line."
        ),
    ),
)


def _unsupported(name: str, sections: frozenset[str], why: str, body: Body = Body.ANY) -> ElementSpec:
    return ElementSpec(name, sections=sections, body=body, closed=False, supported=False, limits=why)


_RESOLVER = ("A GraphQL resolver of a synthetic GraphQL API: apim-mi runs an API's REST pipeline, it does not execute "
             "GraphQL.")  # fmt: skip
_GRAPHQL_SCHEMA = "Validates against the API's GraphQL schema; apim-mi loads OpenAPI documents, not GraphQL schemas."
_INBOUND_OUTBOUND_ON_ERROR = frozenset({"inbound", "outbound", "on-error"})

#: Policies that cannot mean something on one machine: they load (sections checked) and fail loudly, with the reason
#: (``Policy 'x' is not supported by apim-mi …: <reason>``), when a request reaches them.
_KNOWN: tuple[ElementSpec, ...] = (
    _unsupported("invoke-dapr-binding", _INBOUND_OUTBOUND_ON_ERROR, DAPR_REASON),
    _unsupported("publish-to-dapr", _INBOUND_OUTBOUND_ON_ERROR, DAPR_REASON),
    _unsupported("set-graphql-resolver", INBOUND, _RESOLVER),
    # resolver policies live in a resolver's own document, never in a policy section: anywhere else they warn
    _unsupported("http-data-source", frozenset(), _RESOLVER),
    _unsupported("cosmosdb-data-source", frozenset(), _RESOLVER),
    _unsupported("sql-data-source", frozenset(), _RESOLVER),
    _unsupported("publish-event", frozenset(), _RESOLVER),
    _unsupported("validate-graphql-request", INBOUND, _GRAPHQL_SCHEMA),
)


def _required(*names: str) -> tuple[AttributeSpec, ...]:
    return tuple(AttributeSpec(n, required=True) for n in names)


def _action_item(name: str, key: str) -> ElementSpec:
    """validate-*'s per-item override: ``<parameter name action>``, ``<header name action>``, ``<status-code …>``."""
    return ElementSpec(name, attributes=_attrs(*_required(key, "action")))


_VALIDATION_LIMITS = (
    "Against the rule's `openapi:` document (OpenAPI 3; APIM's imported API schema). APIM's errors and messages "
    "(`{Name, Type, ValidationRule, Details, Action}` in `errors-variable-name`); `prevent` answers 400 in inbound, "
    "502 afterwards, `{\"statusCode\": N, \"message\": <public response>}`, LastError \"Bad request\" / "
    "\"Response not allowed\". No definition or no matching operation: the ApiSchema error."
)


def _items(name: str, item: str, *attributes: AttributeSpec) -> ChildSpec:
    """A container of repeated text elements (cors' allowed-origins/origin …)."""
    return ChildSpec(ElementSpec(name, attributes=_attrs(*attributes), body=Body.ELEMENTS,
                                 children=(ChildSpec(ElementSpec(item, body=Body.TEXT), max=None),)))


#: Transformations and access checks (policy/statements/transform.py, access.py).
_CONTENT: tuple[ElementSpec, ...] = (
    ElementSpec(
        "json-to-xml",
        sections=frozenset({"inbound", "outbound", "on-error"}),
        attributes=_attrs(
            AttributeSpec("apply", required=True), _bool("consider-accept-header", "true", expressions=True),
            _bool("parse-date", "true"), AttributeSpec("namespace-separator", default="_"),
            AttributeSpec("namespace-prefix"), AttributeSpec("attribute-block-name"),
        ),
        summary="Converts a JSON body to XML.",
        limits="Inferred output (not documented): `<Document>` root unless the JSON is one property holding an "
        "object; arrays as repeated elements; `True`/`False`; null as `xsi:nil=\"true\"`; non-XML names encoded "
        "`_xHHHH_`; `parse-date` trims a date's trailing fractional zeros; no XML declaration. Content-Type becomes "
        "`application/xml`. `consider-accept-header` converts only when Accept asks for XML (q>0, no wildcards).",
    ),
    ElementSpec(
        "xml-to-json",
        sections=frozenset({"inbound", "outbound", "on-error"}),
        attributes=_attrs(
            AttributeSpec("kind", required=True), AttributeSpec("apply", required=True),
            _bool("consider-accept-header", "true", expressions=True),
            _bool("always-array-child-elements", "false", expressions=True),
        ),
        summary="Converts an XML body to JSON.",
        limits="Inferred output: `direct` is Newtonsoft's shape with APIM's `$` for `:` (`soap$Envelope`, "
        "`@xmlns$soap`), the XML declaration as top-level properties, `@` attributes, `#text` for mixed content, "
        "empty elements null; `javascript-friendly` drops the declaration and namespace declarations. Compact JSON, "
        "Content-Type `application/json`. DTDs and external entities are not resolved.",
    ),
    ElementSpec(
        "find-and-replace",
        attributes=_attrs(AttributeSpec("from", required=True), AttributeSpec("to", required=True)),
        summary="Replaces every occurrence of a string in the body.",
        limits="Ordinal, case-sensitive replacement of every occurrence in the body (request before the backend, "
        "response after it).",
    ),
    ElementSpec(
        "xsl-transform",
        sections=frozenset({"inbound", "outbound", "on-error"}),
        body=Body.TEXT,
        markup_text=True,  # <parameter> elements and the <xsl:stylesheet>, read by the handler
        summary="Transforms an XML body with an XSLT 1.0 stylesheet (with parameters).",
        limits="lxml/libxslt (XSLT 1.0 like .NET's XslCompiledTransform); `<parameter>` values (expressions "
        "allowed) are string parameters; no document()/extension access; the stylesheet is compiled once per text.",
    ),
    ElementSpec(
        "cors",
        sections=INBOUND,
        attributes=_attrs(_bool("allow-credentials", "false", expressions=True),
                          _bool("terminate-unmatched-request", "true", expressions=True)),
        body=Body.ELEMENTS,
        children=(
            _items("allowed-origins", "origin"),
            _items("allowed-methods", "method", _int("preflight-result-max-age")),
            _items("allowed-headers", "header"),
            _items("expose-headers", "header"),
        ),
        ordered=True,
        summary="Answers CORS preflight requests and adds CORS headers to allowed cross-origin responses.",
        limits="Preflight answered with the requested method and headers echoed (inferred, as ASP.NET does); an "
        "unmatched preflight always ends with an empty 200 (there is no other scope's cors to fall back to); "
        "actual requests are checked by origin only and get Allow-Origin/-Credentials/Expose-Headers on whatever "
        "response the caller gets.",
    ),
    ElementSpec(
        "validate-azure-ad-token",
        sections=INBOUND,
        attributes=_attrs(
            AttributeSpec("tenant-id", required=True), AttributeSpec("header-name"),
            AttributeSpec("query-parameter-name"), AttributeSpec("token-value"),
            AttributeSpec("authentication-endpoint"), _int("failed-validation-httpcode", "401"),
            AttributeSpec("failed-validation-error-message"),
            AttributeSpec("output-token-variable-name", expressions=False),
        ),
        body=Body.ELEMENTS,
        children=(
            _items("client-application-ids", "application-id"),
            _items("backend-application-ids", "application-id"),
            _items("audiences", "audience"),
            ChildSpec(_list("required-claims", CLAIM)),
            ChildSpec(_list("decryption-keys", ElementSpec("key", closed=False, body=Body.TEXT))),
        ),
        summary="Validates a Microsoft Entra ID token (tenant, audiences, client applications, claims).",
        limits="Keys and issuer from `{authority}/{tenant-id}/v2.0/.well-known/openid-configuration`; the authority "
        "is `authentication-endpoint`, else the embedded emulator, else `AZURE_AUTHORITY_HOST`, else "
        "login.microsoftonline.com. Issuer v1 or v2 of the token's tenant; `backend-application-ids` match `aud` "
        "as id or `api://id`; `client-application-ids` match `appid`/`azp`. Failures as validate-jwt (reasons, "
        "`{\"statusCode\": 401, \"message\": …}`); no `decryption-keys`.",
    ),
    ElementSpec(
        "get-authorization-context",
        sections=INBOUND,
        attributes=_attrs(
            AttributeSpec("provider-id", required=True), AttributeSpec("authorization-id", required=True),
            AttributeSpec("context-variable-name", required=True, expressions=False),
            AttributeSpec("identity-type", default="managed"), AttributeSpec("identity"),
            _bool("ignore-error", "false", expressions=True),
        ),
        summary="Gets an access token from a credential manager connection into a context variable.",
        limits="A local credential manager: the rules file's `authorizations:` (provider id → authorization id → "
        "`access_token`, `claims`) stands in for APIM's connections; `identity-type`/`identity` are not checked. "
        "The variable holds an `Authorization` (`AccessToken`, `Claims`); the token is kept out of traces. Unknown "
        "connection: `AuthorizationNotFound` (500), or null with `ignore-error`.",
    ),
    ElementSpec(
        "validate-parameters",
        sections=INBOUND,
        attributes=_attrs(*_required("specified-parameter-action", "unspecified-parameter-action"),
                          AttributeSpec("errors-variable-name", expressions=False)),
        body=Body.ELEMENTS,
        children=tuple(ChildSpec(ElementSpec(
            where, attributes=_attrs(AttributeSpec("specified-parameter-action"),
                                     AttributeSpec("unspecified-parameter-action")),
            body=Body.ELEMENTS, children=(ChildSpec(_action_item("parameter", "name"), max=None),),
        )) for where in ("headers", "query", "path")),
        summary="Validates the request's header, query and path parameters against the API definition.",
        limits=_VALIDATION_LIMITS + " Standard HTTP headers (Host, Accept, User-Agent …) are never \"unspecified\"; a "
        "missing required parameter is reported as `IncorrectMessage` (inferred).",
    ),
    ElementSpec(
        "validate-headers",
        sections=frozenset({"outbound", "on-error"}),
        attributes=_attrs(*_required("specified-header-action", "unspecified-header-action"),
                          AttributeSpec("errors-variable-name", expressions=False)),
        body=Body.ELEMENTS,
        children=(ChildSpec(_action_item("header", "name"), max=None),),
        summary="Validates the response headers against the API definition.",
        limits=_VALIDATION_LIMITS + " Standard response headers (Date, Content-Length …) are never \"unspecified\".",
    ),
    ElementSpec(
        "validate-content",
        sections=frozenset({"inbound", "outbound", "on-error"}),
        attributes=_attrs(
            AttributeSpec("unspecified-content-type-action", required=True), _int("max-size", required=True),
            AttributeSpec("size-exceeded-action", required=True),
            AttributeSpec("errors-variable-name", expressions=False),
        ),
        body=Body.ELEMENTS,
        children=(
            ChildSpec(ElementSpec(
                "content-type-map",
                attributes=_attrs(AttributeSpec("any-content-type-value"), AttributeSpec("missing-content-type-value")),
                body=Body.ELEMENTS,
                children=(ChildSpec(ElementSpec("type", attributes=_attrs(
                    AttributeSpec("from"), AttributeSpec("when"), AttributeSpec("to", required=True))), max=None),),
            )),
            ChildSpec(ElementSpec("content", attributes=_attrs(
                AttributeSpec("type"), AttributeSpec("validate-as", required=True), AttributeSpec("schema-id"),
                AttributeSpec("schema-ref"), AttributeSpec("action", required=True),
                AttributeSpec("allow-additional-properties"), AttributeSpec("case-insensitive-property-names"),
            )), max=None),
        ),
        summary="Validates the size and content of a request or response body against the API definition.",
        limits=_VALIDATION_LIMITS + " JSON bodies against the operation's schema for the content type, or "
        "`schema-id` as `#/components/schemas/{id}` (`schema-ref` as a pointer) of the same document, with "
        "jsonschema (draft 2020-12, `allow-additional-properties` applied to every object); `validate-as=\"xml\"`/"
        "`\"soap\"` checks well-formedness only (no XSD). No line/position in the details.",
    ),
    ElementSpec(
        "validate-status-code",
        sections=frozenset({"outbound", "on-error"}),
        attributes=_attrs(AttributeSpec("unspecified-status-code-action", required=True),
                          AttributeSpec("errors-variable-name", expressions=False)),
        body=Body.ELEMENTS,
        children=(ChildSpec(_action_item("status-code", "code"), max=None),),
        summary="Validates the response status code against the API definition.",
        limits=_VALIDATION_LIMITS + " A code is specified when the operation lists it, its `NXX` range or `default`.",
    ),
    ElementSpec(
        "ip-filter",
        sections=INBOUND,
        attributes=_attrs(AttributeSpec("action", required=True)),
        body=Body.ELEMENTS,
        children=(
            ChildSpec(ElementSpec("address", body=Body.TEXT), max=None),
            ChildSpec(ElementSpec("address-range", attributes=_attrs(
                AttributeSpec("from", required=True), AttributeSpec("to", required=True))), max=None),
        ),
        summary="Allows or forbids callers by IP address and range (403 otherwise).",
        limits="The caller is the proxy client's address (`context.Request.IpAddress`); `<address>` also takes a "
        "CIDR block. Refused: 403 `{\"statusCode\": 403, \"message\": \"Forbidden\"}`, LastError "
        "`CallerIpNotAllowed`.",
    ),
)

_CLIENT_IDENTITY = ElementSpec("identity", attributes=_attrs(*(AttributeSpec(n, expressions=False) for n in (
    "thumbprint", "serial-number", "common-name", "subject", "dns-name", "issuer-subject", "issuer-thumbprint",
    "issuer-certificate-id"))))  # fmt: skip

#: Request checks of the policy index's "Content validation" and "Authentication" families
#: (policy/statements/odata.py, clientcert.py).
_REQUEST_CHECKS: tuple[ElementSpec, ...] = (
    ElementSpec(
        "redirect-content-urls",
        sections=frozenset({"inbound", "outbound"}),
        summary="Rewrites links in the body: backend URLs become gateway URLs (outbound), or the reverse (inbound).",
        limits="The backend root is set-backend-service's base URL, else the API's serviceUrl, else the backend "
        "URL's origin; the gateway root is the caller's origin plus the API's path. Occurrences in the body are "
        "replaced case-insensitively (headers such as Location are left alone); APIM documents no more (inferred).",
    ),
    ElementSpec(
        "validate-client-certificate",
        sections=INBOUND,
        attributes=_attrs(*(_bool(n, "true") for n in ("validate-revocation", "validate-trust", "validate-not-before",
                                                        "validate-not-after")), _bool("ignore-error", "false")),
        body=Body.ELEMENTS,
        children=(ChildSpec(ElementSpec("identities", body=Body.ELEMENTS,
                                        children=(ChildSpec(_CLIENT_IDENTITY, max=10),))),),
        summary="Checks the client's TLS certificate: validity dates, trust chain and identities.",
        limits="The certificate the client presented to mitmproxy (`context.Request.Certificate`): needs TLS between "
        "client and proxy (https:// through the proxy, a reverse mode the client reaches over TLS, "
        "transparent/local/WireGuard interception) and mitmproxy's `request_client_cert`, which apim-mi turns on "
        "when a rule uses this policy. "
        "Without a certificate (plain http://, or HTTP/3: mitmproxy 12's QUIC handshake never asks for one) the "
        "policy fails with `The client did not present a certificate.` Trust: the rules "
        "file's `certificates:` entries with `ca: true` (APIM's uploaded CA certificates), intermediates from the "
        "client's chain. `validate-revocation` is not checked (no CRL/OCSP on a loopback-only machine; the trace "
        "says so). Subjects compare as sets of name attributes. APIM documents no failure response: 401 "
        "`{\"statusCode\": 401, \"message\": \"Invalid client certificate.\"}`, LastError "
        "`ClientCertificateInvalid` with the reason (inferred).",
    ),
    ElementSpec(
        "validate-odata-request",
        sections=INBOUND,
        attributes=_attrs(
            AttributeSpec("error-variable-name", expressions=False),
            AttributeSpec("default-odata-version", default="4.0"),
            AttributeSpec("min-odata-version"),
            AttributeSpec("max-odata-version"),
            _int("max-size"),
        ),
        summary="Validates a request to an OData API: OData-Version, payload size, system query options.",
        limits="OData 4.0/4.01 Part 1-2 rules: OData-Version/OData-MaxVersion syntax and min/max bounds, max-size, "
        "system query options (known names — 4.01 also case-insensitive and `$`-less —, none twice, `$top`/`$skip` "
        "integers, `$count` boolean, `$orderby` items, no empty value); `$filter`/`$select` expressions and the "
        "API's metadata are not checked. APIM documents no error texts: 400 `{\"statusCode\": 400, \"message\": "
        "…}` with the first error, LastError \"Bad request\", errors as validate-*'s in `error-variable-name` "
        "(inferred).",
    ),
)

CATALOG: Mapping[str, ElementSpec] = MappingProxyType(
    {s.name: s for s in (*_SUPPORTED, *_CONTENT, *_RUNTIME, *AI_POLICIES, *_REQUEST_CHECKS, *_KNOWN)}
)


def allowed_in(spec: ElementSpec, section: str) -> bool:
    """May this policy be a statement of ``section`` (top level, or in a when/otherwise branch there)?

    The policy's own page ("Policy sections") or the on-error page's list is enough: the snippets use
    ``cache-lookup-value`` in on-error, which its page allows and the on-error list omits.
    """
    return section in spec.sections or (section == "on-error" and spec.name in ON_ERROR_ALLOWED)


def default_of(policy: str, attribute: str, child: str | None = None) -> str | None:
    """The documented default of an attribute (``child`` names a structured child, e.g. send-request/set-url)."""
    spec = CATALOG.get(policy)
    if spec is not None and child is not None:
        c = spec.child(child)
        spec = c.spec if c else None
    if spec is None:
        return None
    a = spec.attribute(attribute)
    return a.default if a else None
