"""Rules files: ``rules.yaml`` (or ``.xml``) → a validated ``RulesConfig``.

Every rule becomes an APIM ``Policy``: a shorthand rule (``resource``, ``client_id``, ``header``, ``template`` …) is
exactly an ``<authentication-managed-identity>`` (plus a ``<set-header>`` when the header or template differs), so it
runs through the same engine and produces the same trace as real policy XML. Every error names file, line and column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import yaml

from .backends import Backend, BackendError, check_pools, parse_backend
from .credentials import CredentialSpec, parse_credential
from .errors import LoadError, Location
from .policy.gateway import SubscriptionSpec
from .policy.model import Policy, Statement, Value

CREDENTIAL_SOURCES: tuple[str, ...] = ("default", "managed-identity", "workload-identity", "azure-cli", "emulator")
DEFAULT_HEADER = "Authorization"
DEFAULT_TEMPLATE = "Bearer {token}"
SHORTHAND_TOKEN_VARIABLE = "apim-mi-token"
SCHEMA_MODELINE = "# yaml-language-server: $schema=addon/apim_mi/schema/rules.schema.json"

_NAMED_VALUE = re.compile(r"\{\{([^{}]+)\}\}")


@dataclass(frozen=True)
class MatchSpec:
    """What a rule applies to. ``host`` is lower-case; ``*`` = any host; ``*.x`` = subdomains of x."""

    host: str = "*"
    port: int | None = None
    path: str = "/"
    methods: frozenset[str] = frozenset()
    scheme: str | None = None


@dataclass
class Rule:
    """One entry of ``rules:``: where it applies and the policy it runs."""

    name: str
    index: int
    match: MatchSpec
    policy: Policy
    location: Location
    credential: str | CredentialSpec | None = None
    allow_http: bool = False
    shorthand: bool = False
    scope: str | None = None  # the v2 scope as written, when the rule gave one instead of a resource


@dataclass
class RulesConfig:
    """A loaded rules file. ``files`` lists every file it depends on, for hot reload."""

    path: Path
    rules: list[Rule]
    credential: str | CredentialSpec | None = None
    named_values: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    applies_to_all: bool = False
    backends: dict[str, Backend] = field(default_factory=dict)
    #: An APIM instance (``sources.apiops.Gateway``) answering what the rules do not match.
    gateway: Any = None
    #: authentication-certificate: certificate id / thumbprint -> {"path": PEM or PFX file, "password": …}
    certificates: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: get-authorization-context: provider id -> authorization id -> {"access_token": …, "claims": {…}}
    authorizations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: declared subscriptions by key (primary and secondary) and log-to-eventhub sinks by logger id
    subscriptions: dict[str, SubscriptionSpec] = field(default_factory=dict)
    loggers: dict[str, Path] = field(default_factory=dict)


@cache
def rules_schema() -> dict[str, Any]:
    """The JSON Schema shipped in the package (also used by editors through the modeline)."""
    return json.loads(resources.files("apim_mi").joinpath("schema/rules.schema.json").read_text("utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# YAML with positions


@dataclass
class _Positions:
    """JSON path (tuple of keys/indexes) → location of the value, and of the key for mapping entries.

    The tables hold YAML marks (0-based line and column); ``at`` makes the ``Location`` of the one that is asked for,
    so a 10 000-rule file does not build 100 000 ``Location`` objects it never reports."""

    file: str
    values: dict[tuple[Any, ...], yaml.Mark] = field(default_factory=dict)
    keys: dict[tuple[Any, ...], yaml.Mark] = field(default_factory=dict)

    def at(self, path: tuple[Any, ...], key: bool = False) -> Location:
        table = self.keys if key else self.values
        while path and path not in table:
            path = path[:-1]
        mark = table.get(path) or self.values.get(())
        return Location(self.file, mark.line + 1, mark.column + 1) if mark is not None else Location(self.file, 1, 1)


def _mark(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


_STR_TAG = "tag:yaml.org,2002:str"


def _construct(node: yaml.Node, path: tuple[Any, ...], pos: _Positions, scalars: yaml.SafeLoader) -> Any:
    """Plain data from a composed YAML node, remembering where every value came from. ``scalars`` constructs the
    scalars (one loader for the whole document)."""
    pos.values[path] = node.start_mark
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        keys = pos.keys
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise LoadError(_mark(pos.file, knode), "mapping keys must be plain names")
            key = knode.value
            if key in out:
                raise LoadError(_mark(pos.file, knode), f"duplicate key '{key}'")
            kpath = (*path, key)
            keys[kpath] = knode.start_mark
            out[key] = _construct(vnode, kpath, pos, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), pos, scalars) for i, item in enumerate(node.value)]
    if node.tag == _STR_TAG and type(node) is yaml.ScalarNode:
        return node.value  # what SafeConstructor.construct_yaml_str returns
    try:
        return scalars.construct_object(node, deep=True)
    except yaml.YAMLError as e:  # an unknown or unusable tag: '=' (a YAML "value" key), !!python/…, !!binary …
        problem = getattr(e, "problem", None) or "cannot be read"
        raise LoadError(_mark(pos.file, node), f"YAML value {node.value!r}: {problem}") from None
    except (ValueError, OverflowError) as e:  # e.g. a timestamp with no such day: 2026-02-30
        raise LoadError(_mark(pos.file, node), f"YAML value {node.value!r}: {e}") from None


# libyaml (PyYAML's C extension) composes ~2x faster than the pure-Python parser. The pure-Python one stays the
# reference: it parses whatever libyaml refuses (so errors and their positions are PyYAML's own), and any text with
# a character its reader rejects.
_CLoader: Any = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    if _CLoader is not None and not yaml.reader.Reader.NON_PRINTABLE.search(text):
        try:
            return yaml.compose(text, Loader=_CLoader)
        except Exception:  # whatever libyaml refuses, the reference parser decides (and reports)
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _parse_yaml(text: str, file: str) -> tuple[Any, _Positions]:
    pos = _Positions(file)
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problem = e.problem or e.context or "invalid YAML"
        raise LoadError(loc, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise LoadError(Location(file, 1, 1), f"YAML error: {e}") from None
    if node is None:
        raise LoadError(Location(file, 1, 1), "the rules file is empty; it needs a 'rules:' list")
    scalars = yaml.SafeLoader("")
    try:
        return _construct(node, (), pos, scalars), pos
    finally:
        scalars.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Schema validation with locations


def _schema_errors(data: Any, pos: _Positions) -> Iterator[LoadError]:
    """Every schema error, positioned. A valid document (the usual case) is recognised by a compiled check first;
    jsonschema itself, which names the errors, only runs on documents that check does not accept."""
    check = _compiled_schema()
    try:
        if check is not None and check(data):
            return
    except _Unsure:
        pass
    validator = _validator()
    for err in sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path))):
        yield _schema_error(err, pos)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(rules_schema())


class _Unsure(Exception):
    """The compiled check met a value it cannot judge exactly like jsonschema; jsonschema decides."""


_Check = Callable[[Any], bool]
# Keywords that only annotate; everything else the compiler does not know disables the compiled check.
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})


@cache
def _compiled_schema() -> _Check | None:
    """``rules_schema()`` as a Python predicate with jsonschema's Draft 2020-12 semantics for the keywords it uses,
    or None if the schema uses a keyword the compiler does not know. ``True`` means valid; ``False`` or ``_Unsure``
    send the document to jsonschema."""
    schema = rules_schema()
    defs = schema.get("$defs", {})
    compiled: dict[str, _Check] = {}

    def ref(name: str) -> _Check:
        def check(x: Any) -> bool:
            return compiled[name](x)

        return check

    try:
        for name, sub in defs.items():
            compiled[name] = _compile(sub, ref)
        return _compile(schema, ref)
    except _Unsure:
        return None


def _is_type(x: Any, name: str) -> bool:
    if name == "string":
        return isinstance(x, str)
    if name == "object":
        return isinstance(x, dict)
    if name == "array":
        return isinstance(x, list)
    if name == "boolean":
        return isinstance(x, bool)
    if name == "null":
        return x is None
    if isinstance(x, bool):
        return False
    if name == "integer":
        return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
    if name == "number":
        if isinstance(x, int | float):
            return True
        raise _Unsure  # other numbers.Number types: leave them to jsonschema
    raise _Unsure


def _compile(schema: Any, ref: Callable[[str], _Check]) -> _Check:
    if schema is True:
        return lambda x: True
    if schema is False:
        return lambda x: False
    if not isinstance(schema, dict):
        raise _Unsure
    checks: list[_Check] = []
    props: dict[str, _Check] = {}
    for kw, arg in schema.items():
        if kw in _ANNOTATIONS:
            continue
        if kw == "$ref":
            if not (isinstance(arg, str) and arg.startswith("#/$defs/")):
                raise _Unsure
            checks.append(ref(arg[len("#/$defs/") :]))
        elif kw == "type":
            names = [arg] if isinstance(arg, str) else list(arg)
            checks.append(lambda x, names=names: any(_is_type(x, n) for n in names))
        elif kw == "enum" or kw == "const":
            values = [arg] if kw == "const" else list(arg)
            if not all(type(v) is str for v in values):
                raise _Unsure
            allowed = frozenset(values)
            checks.append(lambda x, allowed=allowed: isinstance(x, str) and x in allowed)
        elif kw == "properties":
            props = {k: _compile(v, ref) for k, v in arg.items()}
            checks.append(lambda x, props=props: not isinstance(x, dict) or all(
                props[k](v) for k, v in x.items() if type(k) is str and k in props))  # fmt: skip
        elif kw == "additionalProperties":
            if "patternProperties" in schema:
                raise _Unsure
            known = frozenset(schema.get("properties", {}))
            extra = _compile(arg, ref)
            checks.append(lambda x, known=known, extra=extra: not isinstance(x, dict) or all(
                extra(v) for k, v in x.items() if not (type(k) is str and k in known)))  # fmt: skip
        elif kw == "required":
            names = list(arg)
            checks.append(lambda x, names=names: not isinstance(x, dict) or all(n in x for n in names))
        elif kw == "items":
            if "prefixItems" in schema:
                raise _Unsure
            item = _compile(arg, ref)
            checks.append(lambda x, item=item: not isinstance(x, list) or all(item(v) for v in x))
        elif kw in ("minItems", "maxItems", "minLength", "maxLength"):
            kind = list if kw.endswith("Items") else str
            n = arg
            if kw.startswith("min"):
                checks.append(lambda x, kind=kind, n=n: not isinstance(x, kind) or len(x) >= n)
            else:
                checks.append(lambda x, kind=kind, n=n: not isinstance(x, kind) or len(x) <= n)
        elif kw == "uniqueItems":
            if arg:
                checks.append(_unique)
        elif kw == "pattern":
            rx = re.compile(arg)
            checks.append(lambda x, rx=rx: not isinstance(x, str) or rx.search(x) is not None)
        elif kw in ("oneOf", "anyOf"):
            subs = [_compile(v, ref) for v in arg]
            if kw == "oneOf":
                checks.append(lambda x, subs=subs: sum(1 for c in subs if c(x)) == 1)
            else:
                checks.append(lambda x, subs=subs: any(c(x) for c in subs))
        elif kw == "not":
            sub = _compile(arg, ref)
            checks.append(lambda x, sub=sub: not sub(x))
        else:
            raise _Unsure
    return lambda x: all(c(x) for c in checks)


def _unique(x: Any) -> bool:
    if not isinstance(x, list):
        return True
    if not all(type(v) is str for v in x):
        raise _Unsure
    return len(set(x)) == len(x)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "top level"


def _schema_error(err: jsonschema.ValidationError, pos: _Positions) -> LoadError:
    path = tuple(err.absolute_path)
    where = _dotted(path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        return LoadError(
            pos.at((*path, extra[0]), key=True),
            f"unknown field '{extra[0]}' in {where} (allowed: {', '.join(allowed)})",
        )
    if err.validator == "required":
        return LoadError(pos.at(path), f"{where}: {err.message}")
    if err.validator == "anyOf" and not path and all(set(b) == {"required"} for b in err.validator_value):
        names = " or ".join(f"'{b['required'][0]}'" for b in err.validator_value)
        return LoadError(pos.at(path), f"{where}: the rules file needs {names}")
    if err.validator == "enum":
        choices = ", ".join(map(str, err.validator_value))
        return LoadError(pos.at(path), f"{where}: {err.instance!r} is not one of: {choices}")
    if err.validator == "pattern" and path and path[-1] == "template":
        return LoadError(pos.at(path), f"{where}: the template must contain the placeholder {{token}}")
    if err.validator == "pattern" and path and path[-1] == "header":
        return LoadError(pos.at(path), f"{where}: {err.instance!r} is not a valid HTTP header name")
    if err.validator == "pattern" and path and path[-2:-1] == ("methods",):
        return LoadError(pos.at(path), f"{where}: {err.instance!r} is not an HTTP method (one per list item)")
    if err.validator == "pattern" and path and path[-1] == "path":
        return LoadError(pos.at(path), f"{where}: must start with / (got {err.instance!r})")
    if err.validator == "oneOf" and path and path[-1] == "credential":
        if not isinstance(err.instance, dict):
            return LoadError(pos.at(path), f"{where}: {err.instance!r} is not one of: {', '.join(CREDENTIAL_SOURCES)}")
        in_object = sorted((e for e in err.context or () if e.schema_path and e.schema_path[0] == 1),
                           key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))  # fmt: skip
        if in_object:
            return _schema_error(in_object[0], pos)
    if path == ("apim",) or (path[:1] == ("apim",) and err.validator == "required"):
        return LoadError(pos.at(path), "apim: the APIOps extraction folder (apim: path, or apim: {extraction: path, "
                         "…overrides})")
    if err.validator == "oneOf" and path and path[-2:-1] == ("rules",):
        return LoadError(pos.at(path), f"{where}: {_shorthand_conflict(err.instance)}")
    return LoadError(pos.at(path), f"{where}: {err.message}")


def _shorthand_conflict(rule: Mapping[str, Any]) -> str:
    fields = ("resource", "scope", "client_id", "header", "template", "exists_action", "ignore_error")
    shorthand = [k for k in fields if k in rule]
    if "policy" in rule:
        return f"'policy' cannot be combined with the shorthand field(s) {', '.join(shorthand)}; put them in the policy"
    if "resource" in rule and "scope" in rule:
        return "'resource' (v1) and 'scope' (v2) name the same audience: give one of them"
    return "a rule needs either 'resource' or 'scope' (shorthand) or 'policy' (APIM policy XML)"


# ---------------------------------------------------------------------------------------------------------------
# Rule building


def substitute_named_values(text: str, named_values: Mapping[str, str], location: Location) -> str:
    """APIM named values: ``{{name}}`` replaced textually; an unknown name is an error (as APIM refuses to save)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1).strip()
        if name not in named_values:
            raise LoadError(location, f"unknown named value '{{{{{name}}}}}' (define it under named_values:)")
        return named_values[name]

    return _NAMED_VALUE.sub(repl, text)


def parse_host(spec: str) -> tuple[str, int | None]:
    """``Host[:port]`` → (lower-case host, port). Accepts ``[v6]:port``, ``*`` and ``*.suffix``."""
    spec = spec.strip().lower()
    if "://" in spec:
        raise ValueError(f"host '{spec}' must be a bare host name, not a URL (use scheme: to restrict the scheme)")
    port: int | None = None
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in host '{spec}'")
        host, rest = spec[1:end], spec[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected text after ']' in host '{spec}'")
            port = _port(rest[1:])
        return host, port
    if spec.count(":") == 1:
        spec, p = spec.split(":")
        port = _port(p)
    host = spec
    if not host:
        raise ValueError("empty host")
    if "*" in host and not (host == "*" or (host.startswith("*.") and "*" not in host[2:] and len(host) > 2)):
        raise ValueError(f"bad wildcard in host '{host}': use '*' or '*.example.com'")
    if any(c in host for c in "/?#@ "):
        raise ValueError(f"host '{host}' must be a bare host name, not a URL")
    return host, port


def _port(p: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f"bad port '{p}'")
    return int(p)


def _match_spec(raw: Mapping[str, Any], path: tuple[Any, ...], pos: _Positions) -> MatchSpec:
    try:
        host, port = parse_host(str(raw.get("host", "*")))
    except ValueError as e:
        raise LoadError(pos.at((*path, "host")), f"{_dotted((*path, 'host'))}: {e}") from None
    mpath = str(raw.get("path", "/"))
    if "[" in mpath or "]" in mpath:
        raise LoadError(pos.at((*path, "path")), f"{_dotted((*path, 'path'))}: only '*' and '?' are glob characters")
    return MatchSpec(
        host=host,
        port=port,
        path=mpath,
        methods=frozenset(m.upper() for m in raw.get("methods", ())),
        scheme=raw.get("scheme"),
    )


def _literal(text: str, loc: Location) -> Value:
    return Value(text, loc)


@dataclass(frozen=True)
class TemplateExpression:
    """``template`` of a shorthand rule, e.g. ``Bearer {token}``, evaluated against the token variable.

    It is shown as the C# expression APIM would need for the same effect, so traces read like real policies.
    """

    template: str
    variable: str
    #: No compiled closure: ``engine.evaluate_now`` calls ``evaluate`` (as for an expression the interpreter runs).
    closure: ClassVar[None] = None

    @property
    def source(self) -> str:
        prefix, _, suffix = self.template.partition("{token}")
        parts = [json.dumps(prefix)] if prefix else []
        parts.append(f'(string)context.Variables["{self.variable}"]')
        if suffix:
            parts.append(json.dumps(suffix))
        return "@(" + " + ".join(parts) + ")"

    def evaluate(self, context: Any) -> Any:
        token = context.variables.get(self.variable)
        return None if token is None else self.template.replace("{token}", token)


def scope_as_resource(rule: Mapping[str, Any], loc: Location, named_values: Mapping[str, str]) -> Mapping[str, Any]:
    """A shorthand rule with its v2 ``scope`` replaced by the v1 ``resource`` it stands for (a located error when it
    is not exactly one ``.default`` scope)."""
    from .scopes import resource_from_scope

    if "scope" not in rule:
        return rule
    scope = rule["scope"]
    texts = [scope] if isinstance(scope, str) else list(scope)
    try:
        resource = resource_from_scope([substitute_named_values(str(t), named_values, loc) for t in texts])
    except ValueError as e:
        raise LoadError(loc, str(e)) from None
    return {**{k: v for k, v in rule.items() if k != "scope"}, "resource": resource}


def credential_of(
    raw: Mapping[str, Any], path: tuple[Any, ...], pos: _Positions, named_values: Mapping[str, str], base_dir: Path
) -> str | CredentialSpec | None:
    """A ``credential:`` value: a source name, or an app registration (named values substituted in its fields,
    file paths relative to the rules file)."""
    value = raw.get("credential")
    if not isinstance(value, Mapping):
        return value
    return app_credential_of(value, pos.at(path), named_values, base_dir)


def app_credential_of(
    value: Mapping[str, Any], loc: Location, named_values: Mapping[str, str], base_dir: Path
) -> CredentialSpec:
    """An app registration's credential from its fields (YAML keys, or XML attributes in snake_case)."""
    fields = {k: substitute_named_values(str(v), named_values, loc) for k, v in value.items()}
    for name in ("certificate_path", "token_file"):
        if fields.get(name):
            fields[name] = str(base_dir / fields[name])
    try:
        return parse_credential(fields)
    except ValueError as e:
        raise LoadError(loc, str(e)) from None


def written_scope(rule: Mapping[str, Any]) -> str | None:
    scope = rule.get("scope")
    return None if scope is None else (scope if isinstance(scope, str) else " ".join(map(str, scope)))


def shorthand_policy(rule: Mapping[str, Any], loc: Location, named_values: Mapping[str, str]) -> Policy:
    """The APIM policy a shorthand rule stands for."""
    resource = substitute_named_values(str(rule["resource"]), named_values, loc)
    header = rule.get("header", DEFAULT_HEADER)
    template = rule.get("template", DEFAULT_TEMPLATE)
    exists_action = rule.get("exists_action", "override")
    mi_attrs = {"resource": _literal(resource, loc)}
    if "client_id" in rule:
        mi_attrs["client-id"] = _literal(substitute_named_values(str(rule["client_id"]), named_values, loc), loc)
    mi_attrs["ignore-error"] = _literal("true" if rule.get("ignore_error") else "false", loc)
    inbound = [Statement("authentication-managed-identity", loc, mi_attrs)]
    if header.lower() != DEFAULT_HEADER.lower() or template != DEFAULT_TEMPLATE or exists_action != "override":
        mi_attrs["output-token-variable-name"] = _literal(SHORTHAND_TOKEN_VARIABLE, loc)
        expr = TemplateExpression(template, SHORTHAND_TOKEN_VARIABLE)
        value = Statement("value", loc, text=Value(expr.source, loc, expr))
        inbound.append(
            Statement(
                "set-header",
                loc,
                {"name": _literal(header, loc), "exists-action": _literal(exists_action, loc)},
                children=[value],
            )
        )
    policy = Policy(source=loc.file)
    policy.sections["inbound"] = [Statement("base", loc), *inbound]
    policy.sections["backend"] = [Statement("base", loc)]
    policy.sections["outbound"] = [Statement("base", loc)]
    policy.sections["on-error"] = [Statement("base", loc)]
    return policy


def _load_policy(spec: str, base_dir: Path, file: str, loc: Location, ctx: _LoadContext) -> Policy:
    """A ``policy:`` value: inline XML (starts with '<') or a path relative to the rules file."""
    from .policy import loader

    if spec.lstrip().startswith("<"):
        return loader.load_policy_text(
            spec,
            source=file,
            named_values=ctx.named_values,
            fragments_dir=ctx.fragments_dir,
            origin=_inline_origin(ctx.text, loc),
        )
    path = (base_dir / spec).resolve()
    if not path.is_file():
        raise LoadError(loc, f"policy file '{spec}' not found (looked in {path.parent})")
    ctx.files.append(path)
    return loader.load_policy_file(path, named_values=ctx.named_values, fragments_dir=ctx.fragments_dir)


def api_definition(spec: str, base_dir: Path, loc: Location, files: list[Path]) -> Any:
    """A rule's ``openapi:`` document (relative to the rules file), read now; watched for hot reload."""
    from .openapi import DefinitionError, load_definition

    path = (base_dir / spec).resolve()
    try:
        definition = load_definition(path)
    except DefinitionError as e:
        raise LoadError(loc, f"openapi: {e}") from None
    files.append(path)
    return definition


def _inline_origin(text: str, loc: Location) -> Any:
    """Where inline policy XML starts in the YAML file, so its errors name the real line and column: a block
    scalar (``|``/``>``) starts on the next line at its indentation; a quoted one after the quote."""
    from .policy.loader import Origin

    lines = text.split("\n")
    line = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
    indicator = line[loc.column - 1 : loc.column] if loc.column else ""
    if indicator in ("|", ">"):
        for n in range(loc.line, len(lines)):
            if lines[n].strip():
                indent = len(lines[n]) - len(lines[n].lstrip(" "))
                return Origin(n + 1, indent + 1, indent)
        return Origin(loc.line + 1, 1)
    if indicator in ('"', "'"):
        return Origin(loc.line, loc.column + 1)
    return Origin(loc.line, loc.column)


@dataclass
class _LoadContext:
    named_values: dict[str, str]
    fragments_dir: Path | None
    files: list[Path]
    text: str = ""


def load_rules(path: str | Path) -> RulesConfig:
    """Load, validate and compile a rules source: ``.yaml``/``.yml``, ``.xml``, an APIOps folder, or a .NET app's
    ``appsettings.json`` (``sources/appsettings.py``)."""
    path = Path(path)
    if path.is_dir():
        from .sources.apiops import load_gateway

        gateway = load_gateway(path)
        return RulesConfig(path=path, rules=[], files=gateway.instance.extraction.files, gateway=gateway,
                           backends=gateway.instance.publish_backends())
    text = read_source(path, "rules file")
    if path.suffix.lower() == ".xml":
        from .xmlrules import load_xml_rules

        return load_xml_rules(text, path)
    from .sources.appsettings import is_appsettings, load_appsettings

    if is_appsettings(path):
        return load_appsettings(path)
    return load_rules_text(text, path)


def read_source(path: Path, what: str, encoding: str = "utf-8") -> str:
    """A rules source's text; a missing or unreadable file is a LoadError naming it."""
    try:
        return path.read_text(encoding)
    except FileNotFoundError:
        raise LoadError(Location(str(path)), f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(Location(str(path)), f"cannot read {what}: {e}") from None


def load_rules_text(text: str, path: Path) -> RulesConfig:
    """Like ``load_rules`` for YAML text that claims to come from ``path`` (used by tests and the fuzzer)."""
    from .policy import loader

    display = str(path)
    data, pos = _parse_yaml(text, display)
    if not isinstance(data, dict):
        raise LoadError(pos.at(()), "the rules file must be a mapping with a 'rules:' list")
    for err in _schema_errors(data, pos):
        raise err
    named = {str(k): str(v) for k, v in (data.get("named_values") or {}).items()}
    base_dir = path.parent
    fragments = data.get("fragments")
    ctx = _LoadContext(named, (base_dir / fragments).resolve() if fragments else None, [path.resolve()], text)
    outer = loader.DEFAULT_GLOBAL
    if "policy" in data:
        global_policy = _load_policy(str(data["policy"]), base_dir, display, pos.at(("policy",)), ctx)
        outer = loader.compose(loader.DEFAULT_GLOBAL, global_policy)
    rules: list[Rule] = []
    for i, raw in enumerate(data.get("rules") or []):
        rpath = ("rules", i)
        loc = pos.at(rpath)
        match = _match_spec(raw.get("match", {}), (*rpath, "match"), pos)
        if "policy" in raw:
            inner = _load_policy(str(raw["policy"]), base_dir, display, pos.at((*rpath, "policy")), ctx)
            shorthand = False
        else:
            at = pos.at((*rpath, "scope" if "scope" in raw else "resource"))
            inner = shorthand_policy(scope_as_resource(raw, at, named), at, named)
            shorthand = True
        composed = loader.compose(outer, inner)
        if "openapi" in raw:
            composed.api_definition = api_definition(str(raw["openapi"]), base_dir, pos.at((*rpath, "openapi")),
                                                     ctx.files)
        rules.append(
            Rule(
                name=str(raw.get("name") or f"rule {i + 1}"),
                index=i,
                match=match,
                policy=composed,
                location=loc,
                credential=credential_of(raw, (*rpath, "credential"), pos, named, base_dir),
                allow_http=bool(raw.get("allow_http", False)),
                shorthand=shorthand,
                scope=written_scope(raw),
            )
        )
    config = RulesConfig(
        path=path,
        rules=rules,
        credential=credential_of(data, ("credential",), pos, named, base_dir),
        named_values=named,
        files=ctx.files,
        backends=_backends(data.get("backends") or {}, named, pos),
        certificates=_certificates(data.get("certificates") or {}, named, pos, path.parent),
        authorizations=_authorizations(data.get("authorizations") or {}, named, pos),
        subscriptions=_subscriptions(data.get("subscriptions") or {}, named, pos),
        loggers={str(k): base_dir / substitute_named_values(str(v), named, pos.at(("loggers", k)))
                 for k, v in (data.get("loggers") or {}).items()},
    )
    if "import" in data:
        _import_rules(config, data["import"], ("import",), pos)
    if "apim" in data:
        from .sources.apiops import from_rules_entry

        config.gateway = from_rules_entry(data["apim"], base_dir, lambda p: pos.at(p, key=True))
        config.files += config.gateway.instance.extraction.files + config.gateway.instance.overrides.files
        own = config.backends
        config.gateway.instance.shadowed = set(own)
        config.backends = config.gateway.instance.publish_backends()  # the very dict Key Vault refreshes update
        config.backends.update(own)
    return config


def _certificates(raw: Mapping[str, Any], named: Mapping[str, str], pos: _Positions,
                  base_dir: Path) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``certificates:`` (id or thumbprint → file), each file read now so a bad one is a located load error."""
    from .clientcerts import CertificateError, load_ca, load_file

    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        entry = {"path": v} if isinstance(v, str) else dict(v)
        file = (base_dir / substitute_named_values(str(entry["path"]), named, pos.at(("certificates", k)))).resolve()
        password = entry.get("password")
        if password is not None:
            password = substitute_named_values(str(password), named, pos.at(("certificates", k, "password")))
        try:
            load_ca(file) if entry.get("ca") else load_file(file, password)
        except CertificateError as e:
            raise LoadError(pos.at(("certificates", k)), f"certificate '{k}': {e}") from None
        out[str(k)] = {"path": str(file), "password": password, "ca": bool(entry.get("ca"))}
    return out


def _authorizations(raw: Mapping[str, Any], named: Mapping[str, str], pos: _Positions) -> dict[str, dict[str, Any]]:
    """``authorizations:`` provider → authorization id → access token (named values substituted) and claims."""
    out: dict[str, dict[str, Any]] = {}
    for provider, entries in raw.items():
        for auth_id, entry in (entries or {}).items():
            where = pos.at(("authorizations", provider, auth_id, "access_token"))
            token = substitute_named_values(str(entry.get("access_token", "")), named, where)
            out.setdefault(str(provider), {})[str(auth_id)] = {"access_token": token,
                                                               "claims": dict(entry.get("claims") or {})}
    return out


def _import_rules(config: RulesConfig, value: Any, path: tuple[Any, ...], pos: _Positions) -> None:
    """``import: {appsettings: file, sections: [...], client_credential: SourceType}`` (or a list of them): the
    rules of a .NET app's appsettings.json, after this file's own rules."""
    from .sources.appsettings import import_entries, load_appsettings

    for i, entry in enumerate(import_entries(value)):
        at = (*path, i) if isinstance(value, list) else path
        file = (config.path.parent / str(entry["appsettings"])).resolve()
        if not file.is_file():
            raise LoadError(pos.at((*at, "appsettings")), f"appsettings file '{entry['appsettings']}' not found")
        imported = load_appsettings(file, entry.get("sections"), client_credential=entry.get("client_credential"),
                                    selected_at=pos.at((*at, "sections")))  # fmt: skip
        for rule in imported.rules:
            rule.index = len(config.rules)
            config.rules.append(rule)
        config.files += imported.files


def _subscriptions(raw: Mapping[str, Any], named: Mapping[str, str], pos: _Positions) -> dict[str, SubscriptionSpec]:
    out: dict[str, SubscriptionSpec] = {}
    for sid, entry in raw.items():
        keys = {k: substitute_named_values(str(entry[k]), named, pos.at(("subscriptions", sid, k)))
                for k in ("primary_key", "secondary_key") if k in entry}  # fmt: skip
        spec = SubscriptionSpec(str(sid), str(entry.get("name") or sid), keys["primary_key"],
                                keys.get("secondary_key", ""))  # fmt: skip
        for k, key in keys.items():
            if key in out:
                raise LoadError(pos.at(("subscriptions", sid, k)),
                                f"subscription '{sid}': this key already belongs to subscription '{out[key].id}'")
            out[key] = spec
    return out


def _backends(raw: Mapping[str, Any], named: Mapping[str, str], pos: _Positions) -> dict[str, Backend]:
    """``backends:`` → APIM backend entities (a URL, or the backend resource's shape), named values substituted."""

    def substituted(value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, str):
            return substitute_named_values(value, named, pos.at(path))
        if isinstance(value, dict):
            return {k: substituted(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [substituted(v, (*path, i)) for i, v in enumerate(value)]
        return value

    out: dict[str, Backend] = {}
    for k, v in raw.items():
        try:
            out[str(k)] = parse_backend(str(k), substituted(v, ("backends", k)))
        except BackendError as e:
            raise LoadError(pos.at(("backends", k, *e.keys())), str(e)) from None
    try:
        check_pools(out)
    except BackendError as e:
        raise LoadError(pos.at(("backends", e.backend, *e.keys())), str(e)) from None
    return out
