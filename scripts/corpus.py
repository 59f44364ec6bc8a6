#!/usr/bin/env python3
"""Regression corpus: load every policy of Azure/api-management-policy-snippets and measure expression coverage.

The corpus is not vendored. Get it once with::

    git clone --depth 1 https://github.com/Azure/api-management-policy-snippets .corpus/api-management-policy-snippets

Then ``scripts/corpus.py`` (or ``--json``) prints: files loaded / total, expressions found, parsed (%), evaluated
against a synthesized request context (%), and the whole policies that run a request end to end through the engine
(``--run`` lists each one's outcome; see ``corpus_run.py``). Named values the snippets reference are supplied
automatically with a placeholder value and listed. Parsing and evaluation use ``apim_mi.policy.expressions`` /
``apim_mi.policy.context`` when they are importable, and report ``n/a`` otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

from apim_mi.errors import LoadError, Location  # noqa: E402
from apim_mi.policy import rawxml  # noqa: E402
from apim_mi.policy.loader import load_fragment_text, load_policy_text  # noqa: E402
from apim_mi.policy.model import Statement  # noqa: E402

DEFAULT_CORPUS = Path(".corpus/api-management-policy-snippets")
CLONE = "git clone --depth 1 https://github.com/Azure/api-management-policy-snippets " + str(DEFAULT_CORPUS)
PLACEHOLDER = "1"  # a named value placeholder that also passes int/bool-free attribute checks


class AutoNamedValues(Mapping[str, str]):
    """Every name resolves, to a value that fits its name (a base64 key for ``AES-Key``, a URL for ``bff-baseurl``,
    a number for ``cachetime`` …; ``PLACEHOLDER`` with ``plain=True``). The names asked for are remembered."""

    def __init__(self, plain: bool = False) -> None:
        self.asked: set[str] = set()
        self.plain = plain

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return PLACEHOLDER if self.plain else named_value_sample(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def named_value_sample(name: str) -> str:
    """What an operator would have stored under a named value of that name."""
    n = name.lower().replace("_", "-")
    if n.endswith("-iv") or n == "iv":
        return "AAECAwQFBgcICQoLDA0ODw=="  # 16 bytes
    if n.endswith("encryptionkey"):  # the oauth-proxy's selector between <name>1 and <name>2: `var key = {{…}};`
        return "1"
    if n.endswith("name") or n.endswith(".name") or n in ("tablename", "blobtoread", "eventhubname"):
        return "contoso"
    if any(w in n for w in ("key", "secret", "password", "hashing", "signing")):
        return "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64
    if any(w in n for w in ("url", "adress", "address", "endpoint", "authorizer", "server", "host", "request")):
        return "https://login.contoso.com/oauth2/token"
    if any(w in n for w in ("expiry", "seconds", "timeout", "cachetime", "duration")):
        return "3600"
    if "weight" in n:
        return "50"
    if n.endswith("id") or n.endswith("-id"):
        return "00000000-0000-0000-0000-0000000000a1"
    if "scope" in n:
        return "https://graph.microsoft.com/.default"
    if "resource" in n:
        return "api://00000000-0000-0000-0000-0000000000a1"
    if "prefix" in n:
        return "__apim"
    if "validated" in n:
        return "true"
    if "path" in n:
        return "/orders"
    if "namespace" in n or "account" in n or n.endswith("-name"):
        return "contoso"
    return f"{name}-value"


class _Unparsed:
    """Stands in for an expression our parser rejected, so the file still loads and the rest is measured."""

    def __init__(self, source: str) -> None:
        self.source = source

    def evaluate(self, context: Any) -> Any:
        raise RuntimeError("not parsed")


@dataclass
class Report:
    corpus: str
    files: int = 0
    loaded: int = 0
    load_failures: list[dict[str, str]] = field(default_factory=list)
    named_values_supplied: list[str] = field(default_factory=list)
    expressions: int = 0
    parsed: int | None = None
    parse_failures: list[dict[str, str]] = field(default_factory=list)
    evaluated: int | None = None
    evaluation_failures: list[dict[str, str]] = field(default_factory=list)
    evaluation_crashes: int = 0  # exceptions other than ExpressionRuntimeError: bugs in the interpreter
    runs: Any = None  # corpus_run.RunReport: whole policies run through the engine (None when not run)

    def percent(self, n: int | None) -> str:
        if n is None:
            return "n/a"
        return f"{n}/{self.expressions} ({100.0 * n / self.expressions:.1f}%)" if self.expressions else "0/0"


def _real_compiler() -> Callable[[str, Location], Any] | None:
    try:
        from apim_mi.policy.expressions import compile_expression
    except ImportError:
        return None
    return compile_expression  # type: ignore[no-any-return]


_ROOT_RE = re.compile(r"<([A-Za-z][\w.\-]*)")


def root_name(text: str) -> str:
    """The document element's name, ignoring the XML declaration and comments."""
    prepared = rawxml.prepare(rawxml.normalize_newlines(text))
    m = _ROOT_RE.search(prepared.xml)
    return m.group(1) if m else ""


def policy_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*.xml") if ".git" not in p.parts)


def run(corpus: Path, *, evaluate: bool = True, execute: bool = True) -> Report:
    """Load, parse and evaluate; with ``execute`` (and ``evaluate``) also run every loadable whole policy through
    the engine (``corpus_run.py``)."""
    report = Report(str(corpus))
    real = _real_compiler()
    named = AutoNamedValues()
    plain = AutoNamedValues(plain=True)
    fragments: set[Path] = set()
    compiled: list[tuple[Path, Any, Location]] = []
    per_file: dict[Path, list[Statement]] = {}
    current: list[Path] = []
    seen: dict[Location, Any] = {}

    def compile_expression(source: str, location: Location) -> Any:
        if location in seen:  # the retry of a file: the same expression again
            return seen[location]
        report.expressions += 1
        if real is None:
            return _Unparsed(source)
        try:
            expr = real(source, location)
        except LoadError as e:
            report.parse_failures.append({"location": str(e.location), "error": e.message, "source": source})
            seen[location] = _Unparsed(source)
            return seen[location]
        compiled.append((current[-1], expr, location))
        seen[location] = expr
        return expr

    for path in policy_files(corpus):
        report.files += 1
        current.append(path)
        display = str(path.relative_to(corpus))
        try:
            text = path.read_text("utf-8-sig")
            fragment = root_name(text) == "fragment"
            if fragment:
                fragments.add(path)
            try:
                stmts = _load(text, display, path, named, fragment, compile_expression)
            except LoadError:  # a plausible named value an attribute's datatype refuses: plain placeholders
                stmts = _load(text, display, path, plain, fragment, compile_expression)
            per_file[path] = stmts
            report.loaded += 1
        except LoadError as e:
            report.load_failures.append({"file": display, "error": str(e)})
        except (OSError, UnicodeDecodeError) as e:
            report.load_failures.append({"file": display, "error": f"cannot read: {e}"})
    report.named_values_supplied = sorted(named.asked | plain.asked)
    if real is not None:
        report.parsed = report.expressions - len(report.parse_failures)
    if evaluate and real is not None:
        _evaluate(report, per_file, compiled, fragments)
        if execute:
            report.runs = _corpus_run().execute(sys.modules[__name__], corpus)
    return report


def _corpus_run() -> Any:
    """scripts/corpus_run.py, imported by path (this script is itself loaded by path in the tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("apim_mi_corpus_run", Path(__file__).with_name("corpus_run.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _load(text: str, display: str, path: Path, named: Mapping[str, str], fragment: bool,
          compile_expression: Callable[[str, Location], Any]) -> list[Statement]:  # fmt: skip
    if fragment:
        return load_fragment_text(text, source=display, named_values=named, compile_expression=compile_expression)
    policy = load_policy_text(
        text, source=display, named_values=named, fragments_dir=path.parent, compile_expression=compile_expression
    )
    return [s for sec in policy.sections.values() for s in sec]


def _evaluate(
    report: Report,
    per_file: dict[Path, list[Statement]],
    compiled: list[tuple[Path, Any, Location]],
    fragments: set[Path] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Evaluate each parsed expression against a synthesized context, file by file, statement by statement.

    The context is what a request to that policy plausibly looks like (see ``_synthesized_context``), and the
    statements that write variables run as the engine would run them: ``set-variable`` stores its value,
    ``send-request`` an ``IResponse`` with a JSON body, ``authentication-managed-identity`` /
    ``validate-jwt`` their token variables, ``cache-lookup-value`` / ``cache-store-value`` go through a cache.
    Each file is walked ``PASSES`` times, like consecutive requests: the cache and the variables the previous
    walk stored carry over (a value read before the statement that sets it, e.g. in another ``choose`` branch or
    after a cache hit). Only the last walk is counted; every expression is counted exactly once.

    A fragment on its own runs after the policies of its folder and starts with the variables they left (the
    ones that include it, else all of them): a fragment reads what its including policy set.
    """
    try:
        from apim_mi.policy import context as ctxmod
        from apim_mi.policy.expressions import ExpressionRuntimeError
    except ImportError:
        return
    ok = 0
    by_file: dict[Path, list[tuple[Any, Location]]] = {}
    for path, expr, loc in compiled:
        by_file.setdefault(path, []).append((expr, loc))
    final: dict[Path, dict[str, Any]] = {}
    order = sorted(by_file, key=lambda p: (p in fragments, str(p)))
    for path in order:
        exprs = by_file[path]
        statements = [s for top in per_file.get(path, []) for s in top.walk()]
        hints = _Hints.of(path, statements)
        cache: dict[str, Any] = {}
        carried: dict[str, Any] = _fragment_seed(path, fragments, final, per_file) if path in fragments else {}
        for attempt in range(PASSES):
            last = attempt == PASSES - 1
            context = _synthesized_context(ctxmod, hints)
            context.variables.update(carried)
            failures: list[dict[str, str]] = []
            done: set[int] = set()
            good_here = 0
            for stmt in statements:
                values = {}
                for key, value in [*stmt.attrs.items(), ("#text", stmt.text)]:
                    if value is None:
                        continue
                    if value.expression is None or isinstance(value.expression, _Unparsed):
                        values[key] = value.text if value.expression is None else None
                        continue
                    done.add(id(value.expression))
                    result, good = _try(value.expression, context, ExpressionRuntimeError, failures, value.location)
                    good_here += good
                    values[key] = result if good else _FAILED
                _run_effects(stmt, values, context, cache, hints, ctxmod)
            for expr, loc in exprs:  # anything not reached through the statement walk (should be none)
                if id(expr) not in done:
                    good_here += _try(expr, context, ExpressionRuntimeError, failures, loc)[1]
            carried = {k: v for k, v in context.variables.items() if v is not _FAILED}
            final[path] = carried
            if last:
                ok += good_here
                report.evaluation_failures.extend(failures)
                report.evaluation_crashes += sum(1 for f in failures if f["error"].startswith("CRASH"))
    report.evaluated = ok


PASSES = 2
_FAILED = object()


def _fragment_seed(fragment: Path, fragments: set[Path], final: dict[Path, dict[str, Any]],
                   per_file: dict[Path, list[Statement]]) -> dict[str, Any]:  # fmt: skip
    siblings = [p for p in final if p.parent == fragment.parent and p not in fragments]
    including = [p for p in siblings if any(
        s.name == "include-fragment" and s.attr("fragment-id") == fragment.stem
        for top in per_file.get(p, []) for s in top.walk())]  # fmt: skip
    seed: dict[str, Any] = {}
    for p in including or siblings:
        seed.update(final[p])
    return seed


def _run_effects(stmt: Statement, values: dict[str, Any], context: Any, cache: dict[str, Any], hints: _Hints,
                 ctxmod: Any) -> None:  # fmt: skip
    """What a statement does to the variables (and the cache), as the engine would do it."""
    name = stmt.name
    if name == "set-variable" and values.get("value", _FAILED) is not _FAILED:
        context.variables[values.get("name") or ""] = values["value"]
    elif name == "send-request" and values.get("response-variable-name"):
        context.variables[values["response-variable-name"]] = ctxmod.Response(
            200, "OK", ctxmod.Headers(hints.header_pairs([("Content-Type", "application/json")])),
            ctxmod.Body(json.dumps(hints.json_body()).encode(), "application/json"),
        )  # fmt: skip
    elif name in ("authentication-managed-identity", "validate-jwt") and values.get("output-token-variable-name"):
        token: Any = hints.jwt()
        if name == "validate-jwt":
            from apim_mi.policy.expressions.runtime_types import parse_jwt

            token = parse_jwt(token)
        context.variables[values["output-token-variable-name"]] = token
    elif name == "cache-store-value" and values.get("key", _FAILED) not in (_FAILED, None):
        if values.get("value", _FAILED) is not _FAILED:
            cache[str(values["key"])] = values["value"]
    elif name == "cache-lookup-value" and values.get("key", _FAILED) not in (_FAILED, None):
        key, var = str(values["key"]), values.get("variable-name") or ""
        if key in cache:
            context.variables[var] = cache[key]
        elif values.get("default-value", _FAILED) not in (_FAILED, None):
            context.variables[var] = values["default-value"]


def _try(expr: Any, context: Any, runtime_error: type[Exception], failures: list[dict[str, str]],
         loc: Location) -> tuple[Any, int]:  # fmt: skip
    try:
        return expr.evaluate(context), 1
    except runtime_error as e:
        failures.append({"location": str(loc), "error": str(e)[:300]})
    except Exception as e:
        failures.append({"location": str(loc), "error": f"CRASH {type(e).__name__}: {e}"[:300]})
    return None, 0


JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJhcGk6Ly9kZW1vIiwiaXNzIjoiaHR0cHM6Ly9zdHMud2luZG93cy5uZXQvdCIsInN1Y"
    "iI6InVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln"
)

_LOOKUP = r'\s*(?:\.\s*(?:GetValueOrDefault|TryGetValue|ContainsKey)\s*(?:<[^>]*>)?\s*\(|\[)\s*"([^"]+)"'
_HEADER_REF = re.compile(r"Headers" + _LOOKUP)
_QUERY_REF = re.compile(r"Query" + _LOOKUP)
_MATCHED_REF = re.compile(r"MatchedParameters" + _LOOKUP)
_CLAIM_REF = re.compile(r"Claims" + _LOOKUP)
_COOKIE_REF = re.compile(r'\[0\]\s*==\s*\$?"([^"{]+)(\{?)')
_JSON_KEY = re.compile(r'\[\s*"([^"\]]+)"\s*\]|Value<[^>]+>\s*\(\s*"([^"]+)"|SelectToken\s*\(\s*"\$?\.?([\w-]+)"')


@dataclass
class _Hints:
    """What a policy reads from its request: header, query and template parameter names, JSON member names."""

    headers: list[str] = field(default_factory=list)
    query: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    json_keys: list[str] = field(default_factory=list)
    array_body: bool = False
    form_body: bool = False
    claims: list[str] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # names; a trailing "-" takes the form's state

    @classmethod
    def of(cls, path: Path, statements: list[Statement]) -> _Hints:
        sources = [v.text for s in statements for v in [*s.attrs.values(), s.text] if v is not None and v.is_expression]
        text = "\n".join(sources)
        keys = [next(g for g in m.groups() if g) for m in _JSON_KEY.finditer(text)]
        return cls(
            headers=sorted(set(_HEADER_REF.findall(text)), key=str.lower),
            query=sorted(set(_QUERY_REF.findall(text))),
            matched=sorted(set(_MATCHED_REF.findall(text))),
            json_keys=sorted(set(keys)),
            array_body="Request.Body.As<JArray>" in text.replace(" ", ""),
            form_body="Request.Body.AsFormUrlEncodedContent" in text.replace(" ", ""),
            claims=sorted(set(_CLAIM_REF.findall(text))),
            cookies=sorted({name + ("{state}" if brace else "") for name, brace in _COOKIE_REF.findall(text)}),
        )

    def jwt(self) -> str:
        """A JWT whose payload has the usual Entra claims plus every claim the policy reads."""
        now = 1767225600
        payload: dict[str, Any] = {
            "aud": "api://00000000-0000-0000-0000-0000000000a1", "iss": "https://sts.windows.net/t/", "sub": "user",
            "iat": now, "nbf": now, "exp": 4102444800, "oid": "00000000-0000-0000-0000-0000000000b1",
            "tid": "00000000-0000-0000-0000-0000000000c1", "appid": "00000000-0000-0000-0000-0000000000a2",
            "name": "Demo User", "preferred_username": "user@contoso.com", "scp": "read write", "roles": ["Reader"],
        }  # fmt: skip
        for claim in self.claims:
            payload.setdefault(claim, _sample(claim))

        def b64(obj: Any) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

        return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(payload)}.c2ln"

    def json_body(self) -> Any:
        """A JSON document that has every member the policy asks for, with values that fit the member's name;
        an object-valued member (``data``, ``properties`` …) holds them too, for nested paths."""
        flat = {k: _sample(k) for k in self.json_keys}
        return {k: ({**v, **flat} if isinstance(v, dict) else v) for k, v in flat.items()}

    def header_pairs(self, base: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``base`` plus every header the policy reads (from any message), with a value that fits its name."""
        pairs = list(base)
        present = {k.lower() for k, _ in pairs}
        for name in self.headers:
            if name.lower() not in present:
                present.add(name.lower())
                pairs.append((name, _HEADER_SAMPLES.get(name.lower(), str(_sample(name)))))
        return pairs


def _sample(name: str) -> Any:
    """A plausible value for a header, parameter or JSON member called ``name``."""
    n = name.lower()
    if ("token" in n and "type" not in n) or n in ("assertion", "id_token", "jwt"):
        return JWT
    if "cookie" in n:
        return "session=abc; other=1"
    if n in ("expires_in", "ext_expires_in", "refresh_token_expires_in", "count", "ttl") or n.endswith("seconds"):
        return 3600
    if n in ("active", "success", "isvalid", "valid"):
        return True
    if n in ("data", "properties", "body", "payload"):
        return {"id": "1", "name": "demo", "status": "ok"}
    if n in ("value", "items", "results", "documents"):
        return [{"id": "1", "name": "demo"}]
    if "url" in n or "uri" in n or n in ("location", "redirect", "endpoint"):
        return "https://api.contoso.com/callback"
    if "date" in n or n in ("timestamp", "time", "eventtime"):
        return "2026-01-01T00:00:00Z"
    if n in ("token_type", "scheme"):
        return "Bearer"
    if n.endswith("port"):
        return "443"
    if any(w in n for w in ("encr", "cipher", "base64", "cert")):
        return "MDEyMzQ1Njc4OWFiY2RlZg=="
    if n.endswith("proto"):
        return "https"
    return f"{n}-1"


_HEADER_SAMPLES = {
    "authorization": f"Bearer {JWT}",
    "content-type": "application/json",
    "content-length": "48",
    "accept": "application/json",
    "user-agent": "apim-mi-corpus",
    "cookie": "session=abc; other=1",
    "x-forwarded-for": "203.0.113.7",
    "host": "api.contoso.com",
    "x-original-host": "api.contoso.com",
    "x-original-url": "/orders/42",
    "origin": "https://app.contoso.com",
    "referer": "https://app.contoso.com/page",
    "if-match": '"etag-1"',
    "ocp-apim-subscription-key": "0123456789abcdef0123456789abcdef",
    "x-ms-version": "2021-08-06",
    "date": "Thu, 01 Jan 2026 00:00:00 GMT",
}


def _synthesized_context(ctxmod: Any, hints: _Hints | None = None) -> Any:
    """A request that looks like what the policy expects: the usual headers plus every header, query parameter
    and template parameter the policy reads, a JSON body (an array when the policy reads one), an API, operation,
    product, subscription and user, the backend's 200 JSON response, and the LastError on-error sees."""
    hints = hints or _Hints()
    samples = {**_HEADER_SAMPLES, "authorization": f"Bearer {hints.jwt()}"}
    state = str(_sample("state"))
    cookies = ["session=abc", "other=1", *(f"{c.replace('{state}', state)}=part1.part2.4102444800"
                                           for c in hints.cookies)]  # fmt: skip
    samples["cookie"] = "; ".join(cookies)
    base = [(k.title() if k != "x-forwarded-for" else "X-Forwarded-For", samples[k])
            for k in ("host", "authorization", "content-type", "accept", "user-agent", "cookie", "x-forwarded-for")]
    pairs = [(k, samples.get(k.lower(), v)) for k, v in hints.header_pairs(base)]
    query = "api-version=2024-01-01&code=abc&state=xyz"
    for name in hints.query:
        if f"{name}=" not in query:
            query += f"&{name}={_sample(name)}"
    body: Any = {"id": 42, "name": "demo", "items": [1, 2, 3], **hints.json_body()}
    if hints.array_body:
        body = [body]
    content = json.dumps(body).encode()
    if hints.form_body:
        from urllib.parse import urlencode

        content = urlencode({k: _sample(k) for k in ("code", "state", *hints.json_keys)}).encode()
        pairs = [(k, "application/x-www-form-urlencoded" if k.lower() == "content-type" else v) for k, v in pairs]
    request = ctxmod.Request(
        "POST",
        ctxmod.Url.parse(f"https://api.contoso.com/orders/42?{query}"),
        ctxmod.Headers(pairs),
        ctxmod.Body(content, "application/json"),
        matched_parameters={name: str(_sample(name)) for name in hints.matched},
    )
    response = ctxmod.Response(
        200, "OK", ctxmod.Headers(hints.header_pairs([("Content-Type", "application/json")])),
        ctxmod.Body(json.dumps({"ok": True, **hints.json_body()}).encode(), "application/json"),
    )  # fmt: skip
    return ctxmod.Context(
        request=request,
        response=response,
        api=ctxmod.Api(id="orders", name="Orders", path="orders",
                       service_url=ctxmod.Url.parse("https://backend.contoso.com/api")),
        operation=ctxmod.Operation(id="get-order", method="POST", name="Get order", url_template="/{id}"),
        product=ctxmod.Product(id="starter", name="Starter"),
        subscription=ctxmod.Subscription(id="sub-1", key="0123456789abcdef", name="Demo subscription",
                                         primary_key="0123456789abcdef", secondary_key="fedcba9876543210"),
        user=ctxmod.User(id="user-1", email="user@contoso.com", first_name="Demo", last_name="User"),
        last_error=ctxmod.LastError("configuration", "OperationNotFound",
                                    "Unable to match incoming request to an operation.", section="inbound"),
    )


def _print(report: Report) -> None:
    print(f"corpus:       {report.corpus}")
    print(f"files loaded: {report.loaded}/{report.files}")
    for f in report.load_failures:
        print(f"  FAILED {f['error']}")
    if report.named_values_supplied:
        names = ", ".join(report.named_values_supplied)
        print(f"named values supplied with placeholder '{PLACEHOLDER}' ({len(report.named_values_supplied)}): {names}")
    print(f"expressions:  {report.expressions}")
    print(f"parsed:       {report.percent(report.parsed)}")
    for f in report.parse_failures[:20]:
        print(f"  {f['location']}: {f['error']}")
    print(f"evaluated:    {report.percent(report.evaluated)}")
    if report.evaluation_crashes:
        print(f"  interpreter crashes (not ExpressionRuntimeError): {report.evaluation_crashes}")


LIMITS = {
    "authentication-managed-identity": "Tokens from azure-identity (or the emulator); cached per (source, identity, "
    "resource). `authentication-provider` is accepted and ignored.",
    "send-request": "aiohttp, through a proxy only when a `proxy` policy sets one (never the environment's); an "
    "`authentication-certificate` child presents its certificate. Non-2xx answers are responses, not errors.",
    "set-body": "Literal, expression or `template=\"liquid\"` (python-liquid with APIM's `body` and `context` "
    "objects, DotLiquid's C# filter names, `KeyValuePair` iteration, `JSONArrayFor`; `{{x.y}}` without spaces is a "
    "named value, as in APIM). Also in on-error, as deployed policies use it.",
    "set-backend-service": "`backend-id` resolves through the rules file's `backends:` map; `sf-*` are ignored.",
    "rewrite-uri": "`{name}` takes a matched template parameter or the query parameter of that name.",
    "validate-jwt": "RS*/ES*/HS* via OpenID configuration (JWKS cached 1 h, refetched on an unknown kid after 5 min) "
    "or issuer-signing-keys (base64 or n/e); no `decryption-keys` (JWE), no `certificate-id`.",
    "mock-response": "No API examples exist locally: status code and content type, empty body.",
    "trace": "Entry under the policy's `source`; wording of the entry's data is apim-mi's.",
    "forward-request": "A lone top-level forward-request to a plain URL: mitmproxy forwards (`timeout` recorded). "
    "Inside retry/choose/limit-concurrency, a second call, a pool or circuit-broken backend, or with a proxy: "
    "apim-mi calls the backend itself (aiohttp, `timeout`/`timeout-ms`, `fail-on-error-status-code`) and the flow "
    "gets the final response. `follow-redirects` is not applied.",
    "include-fragment": "Expanded when the policy loads.",
}


def policies_doc(report: Report | None) -> str:
    """docs/policies.md: every policy of the catalog, whether apim-mi runs it, its sections, defaults and limits."""
    from apim_mi.policy.catalog import CATALOG
    from apim_mi.policy.model import SECTIONS
    from apim_mi.policy.statements import HANDLERS

    lines = [
        "# Policies",
        "",
        "<!-- Generated by `scripts/corpus.py --policies-doc docs/policies.md` from `policy/catalog.py`, the engine's",
        "     handlers and the snippet corpus; tests/test_corpus.py checks it. -->",
        "",
        "Every APIM policy apim-mi knows. **Runs** policies execute as APIM does (defaults from the policy reference);",
        "the others load (their sections are checked) and fail loudly with `Policy 'x' is not supported` if a request",
        "reaches them: those that cannot mean something on one machine (Dapr, GraphQL resolvers) say why, in the",
        "error and in their limits below. Unknown elements load the same way. Trace entries whose wording Azure's",
        "documentation does not show carry `\"emulator\": \"wording not verified against Azure\"`; conversions",
        "whose output APIM does not document carry `\"emulator\": \"conversion rules inferred: APIM does not",
        "document them\"`, and their limits say what was inferred (from the reference pages' examples and gateway",
        "output quoted in public write-ups).",
        "",
        "| policy | apim-mi | sections | attribute defaults | limits |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(CATALOG):
        spec = CATALOG[name]
        runs = ("runs" if name in HANDLERS else "expanded at load" if name == "include-fragment"
                else "fails loudly (see limits)" if spec.limits else "loads only")  # fmt: skip
        sections = ", ".join(s for s in SECTIONS if s in spec.sections)
        defaults = ", ".join(f"`{a.name}={a.default}`" for a in spec.attributes.values() if a.default is not None)
        lines.append(f"| `{name}` | {runs} | {sections} | {defaults or '–'} | {LIMITS.get(name, spec.limits)} |")
    lines += [
        "", "## Real-world policies", "",
        "Policies deployed by public samples run as regression tests, each file naming its source repository,",
        "path and commit: `../shared/corpus/realworld/policies/` (Azure-Samples/AI-Gateway's MCP, OAuth and",
        "access-control labs, Azure-Samples/Apim-Samples' CORS, credential-manager, authX and costing samples) in",
        "`tests/test_realworld.py`, through the engine and, for four of them, a real mitmdump;",
        "`../shared/corpus/realworld/ai-gateway/` holds the AI-gateway labs. They live beside the repository, not in",
        "it (that folder's README names each file's source and license; `APIM_MI_REALWORLD_CORPUS` points elsewhere),",
        "and their tests skip without them; Microsoft's reference examples in `tests/data/ai-gateway/` always run.",
    ]  # fmt: skip
    lines += ["", "## Regression corpus", ""]
    if report is not None and report.parsed is not None and report.evaluated is not None:
        lines += [
            "[Azure/api-management-policy-snippets](https://github.com/Azure/api-management-policy-snippets)"
            " (not vendored; `scripts/corpus.py` reports these numbers):",
            "",
            "| measure | result |",
            "|---|---|",
            f"| files that load | {report.loaded}/{report.files} |",
            f"| expressions that parse | {report.percent(report.parsed)} |",
            f"| expressions that evaluate against a synthesized context | {report.percent(report.evaluated)} |",
            *([f"| whole policies that run a request end to end (backend call included; `--run`) | "
               f"{report.runs.percent()} of the loadable |"] if report.runs is not None else []),
            "",
            "The synthesized context is what a request to each policy plausibly looks like: the usual headers plus",
            "every header, query and template parameter the policy reads (values that fit the name), a JSON body",
            "(form-encoded or an array when the policy reads one), a JWT carrying the claims it reads, an API,",
            "operation, product, subscription and user, and the backend's 200 JSON response. Named values get values",
            "that fit their names (a base64 key for `AES-Key`, a URL for `bff-baseurl`). Variable-writing statements",
            "run as the engine runs them (`set-variable`, `send-request` → `IResponse`, token variables, a cache for",
            "`cache-lookup-value`/`cache-store-value`); each file is walked twice, like two requests, and only the",
            "second walk counts. A fragment starts with the variables its folder's policies left.",
            "",
            *(["Whole policies run one request each through the engine (`scripts/corpus_run.py`): loaded with the",
               "real expression compiler (the three snippets whose C# does not parse are not loadable, as APIM would",
               "refuse them), against the same synthesized context, with every HTTP exchange (send-request, the",
               "backend call, OpenID discovery) answered by one loopback server and a fake clock for retry",
               "intervals. A policy runs when the engine answers without reaching an unsupported policy or an",
               "internal error; `--run` lists the ones that end in on-error because a policy failed on the",
               "synthesized data (missing C# types, rejected JWTs) and why.",
               ""] if report.runs is not None else []),
            "What still fails is real: C# the interpreter lacks (`byte[].Encrypt/Decrypt`, `XDocument`, `XmlReader`,",
            "`X509Certificate2`), snippet bugs (`MatchedParameters(\"x\")` called like a method, `\"\"` inside a",
            "C# string) and what depends on them.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help=f"snippets checkout (default {DEFAULT_CORPUS})"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation step")
    parser.add_argument("--policies-doc", type=Path, help="write the policies page (docs/policies.md) there")
    parser.add_argument("--run", action="store_true", help="list how every whole policy's request went (every "
                        "loadable one runs through the engine, backend call included, unless --no-run)")
    parser.add_argument("--no-run", action="store_true", help="skip running the whole policies")
    args = parser.parse_args(argv)
    corpus: Path = args.corpus
    if not corpus.is_absolute() and not corpus.is_dir() and (ROOT / corpus).is_dir():
        corpus = ROOT / corpus
    if not corpus.is_dir():
        print(f"corpus not found at {corpus}. Get it with:\n    {CLONE}", file=sys.stderr)
        return 2
    report = run(corpus, evaluate=not args.no_eval, execute=not args.no_run)
    if args.policies_doc:
        args.policies_doc.write_text(policies_doc(report), "utf-8")
    if args.json:
        from dataclasses import asdict

        print(json.dumps({**report.__dict__, "runs": asdict(report.runs) if report.runs else None}, indent=2))
    else:
        _print(report)
        if report.runs is not None:
            runner = _corpus_run()
            if args.run:
                runner.print_report(report.runs)
            else:
                print(f"policies that run: {report.runs.percent()} (details: --run)")
    ran_all = report.runs is None or report.runs.ran == report.runs.loadable
    return 0 if report.loaded == report.files and ran_all else 1


if __name__ == "__main__":
    sys.exit(main())
