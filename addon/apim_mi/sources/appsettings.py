"""A .NET app's ``appsettings.json`` (Microsoft.Identity.Web downstream APIs) as a rules source.

Every downstream-API section -- a top-level section with ``BaseUrl``, or an entry of ``DownstreamApis`` -- becomes
one shorthand rule, exactly as Microsoft.Identity.Web would call that API with an app token:

* match: scheme, host and port of ``BaseUrl``; path prefix ``BaseUrl``'s path + ``RelativePath``; ``HttpMethod``;
* resource: the one ``.default`` scope of ``Scopes``;
* identity: ``AcquireTokenOptions.ManagedIdentity`` (``UserAssignedClientId``, or ``{}`` = system-assigned), else the
  app registration of the ``AzureAd`` section (``AcquireTokenOptions.AuthenticationOptionsName``) with its first
  usable ``ClientCredentials`` entry: ``SignedAssertionFromManagedIdentity`` (managed identity as federated
  credential), ``SignedAssertionFilePath`` (AKS workload identity's token file), ``ClientSecret``, or a certificate
  file (``SourceType: Path``); ``AcquireTokenOptions.Tenant`` picks another tenant;
* header: ``ProtocolScheme`` (default Bearer).

A user-token section (``RequestAppToken`` not true) is an error: a proxy has no signed-in user. .NET reads the file
as JSON with comments and trailing commas, and its keys case-insensitively; so does this module. Every error names
``file:line:column``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..credentials import (
    CLIENT_CERTIFICATE,
    CLIENT_SECRET,
    EXCHANGE_AUDIENCES,
    FIC,
    TOKEN_FILE,
    CredentialSpec,
    parse_credential,
)
from ..errors import LoadError, Location
from ..rules import (
    MatchSpec,
    Rule,
    RulesConfig,
    _parse_yaml,
    _Positions,
    read_source,
    scope_as_resource,
    shorthand_policy,
)

#: Sections holding a map of downstream APIs (the sidecar's appsettings names it in the singular).
API_MAPS = ("downstreamapis", "downstreamapi")
GRAPH_HOSTS = ("graph.microsoft.com",)
DEFAULT_AUTHENTICATION = "AzureAd"
_METHOD = re.compile(r"^[A-Za-z]+$")
#: ClientCredentials source types azure-identity cannot load here, and what to do instead.
_UNSUPPORTED = {
    "keyvault": "a certificate in Key Vault",
    "storewiththumbprint": "a certificate in the Windows certificate store",
    "storewithdistinguishedname": "a certificate in the Windows certificate store",
    "base64encoded": "an inline base64 certificate",
    "signedassertionfromvault": "a signed assertion from Key Vault",
    "autodecryptkeys": "decrypt keys",
    "customsignedassertion": "a custom signed-assertion provider",
}


def is_appsettings(path: Path) -> bool:
    """A ``.json`` rules source is an appsettings file unless it is the rules format written as JSON."""
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(strip_jsonc(path.read_text("utf-8-sig")))
    except (OSError, UnicodeDecodeError, ValueError):
        return True  # reading it as appsettings reports the problem with its location
    return not (isinstance(data, dict) and any(key in data for key in ("rules", "apim", "import")))


# -- reading -------------------------------------------------------------------------------------------------------


def strip_jsonc(text: str) -> str:
    """JSON as .NET's configuration reads it (``//`` and ``/* */`` comments, trailing commas, tabs) → strict JSON
    with every character at its original line and column (comments and commas become spaces)."""
    out = list(text)
    i, n, in_string = 0, len(text), False
    last_comma = -1
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            in_string = c != '"'
        elif c == '"':
            in_string, last_comma = True, -1
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out[i:end] = " " * (end - i)
            i = end
            continue
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out[i:end] = [ch if ch == "\n" else " " for ch in text[i:end]]
            i = end
            continue
        elif c == ",":
            last_comma = i
        elif c in "}]":
            if last_comma >= 0:
                out[last_comma] = " "
            last_comma = -1
        elif c == "\t":
            out[i] = " "
        elif not c.isspace():
            last_comma = -1
        i += 1
    return "".join(out)


def read_appsettings(path: Path) -> tuple[dict[str, Any], _Positions]:
    """The file's data and where every value is; JSON errors name line and column."""
    display = str(path)
    strict = strip_jsonc(read_source(path, "appsettings file", "utf-8-sig"))
    try:
        json.loads(strict)
    except json.JSONDecodeError as e:
        raise LoadError(Location(display, e.lineno, e.colno), f"JSON syntax error: {e.msg}") from None
    data, pos = _parse_yaml(strict, display)  # JSON is YAML: this keeps the positions json.loads does not give
    if not isinstance(data, dict):
        raise LoadError(pos.at(()), "an appsettings file is a JSON object")
    return data, pos


def _get(mapping: Mapping[str, Any], name: str) -> tuple[str | None, Any]:
    """``(key as written, value)`` for ``name``, case-insensitively as .NET configuration reads keys."""
    wanted = name.lower()
    for key, value in mapping.items():
        if str(key).lower() == wanted:
            return str(key), value
    return None, None


def _spaced_keys(mapping: Mapping[str, Any], where: str) -> list[str]:
    """Keys with surrounding spaces: .NET binds no option from them (a real sample has ``"UserAssignedClientId "``)."""
    return [
        f"'{where}:{key}' has spaces around the name: .NET binds no option from it, so it is ignored here too"
        for key in mapping
        if str(key) != str(key).strip()
    ]


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# -- sections ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One downstream-API section: its configuration path (``DownstreamApis:TodoList``), JSON path and options."""

    name: str
    path: tuple[str, ...]
    options: Mapping[str, Any]


def downstream_sections(data: Mapping[str, Any]) -> list[Section]:
    """Top-level sections with ``BaseUrl`` and every entry of ``DownstreamApis`` (or ``DownstreamApi``), in order."""
    out: list[Section] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            continue
        if _get(value, "BaseUrl")[0] is not None:
            out.append(Section(str(key), (key,), value))
        elif str(key).lower() in API_MAPS:
            out += [Section(f"{key}:{name}", (key, name), api) for name, api in value.items() if isinstance(api, dict)]
    return out


def _selected(sections: list[Section], wanted: Sequence[str] | None, where: Location) -> list[Section]:
    if wanted is None:
        return sections
    by_name = {s.name.lower(): s for s in sections} | {s.path[-1].lower(): s for s in sections}
    missing = [w for w in wanted if w.lower() not in by_name]
    if missing:
        known = ", ".join(s.name for s in sections) or "none"
        raise LoadError(where, f"no downstream-API section '{missing[0]}' (sections: {known})")
    return [by_name[w.lower()] for w in wanted]


@dataclass
class _Converter:
    """Turns sections of one file into rules; ``client_credential`` picks a ``ClientCredentials`` SourceType."""

    path: Path
    data: Mapping[str, Any]
    pos: _Positions
    client_credential: str | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def at(self, section: Section, *keys: str) -> Location:
        """Where a section's option is written; the section itself is located at its name."""
        return self.pos.at((*section.path, *keys), key=not keys)

    def rule(self, section: Section, index: int) -> Rule:
        from ..policy import loader

        o = section.options
        notes = self.notes.setdefault(section.name, [])
        warnings = self.warnings.setdefault(section.name, [])
        app_key, app_token = _get(o, "RequestAppToken")
        if not _true(app_token):
            where = self.at(section, app_key) if app_key else self.at(section)
            raise LoadError(
                where,
                f"section '{section.name}': RequestAppToken is {'false' if app_key else 'not set'}"
                ": Microsoft.Identity.Web calls this API with a signed-in user's token, and a proxy has "
                'no user; set "RequestAppToken": true if the API takes app tokens, or leave the '
                "section out (import: sections: [...])",
            )
        match = self._match(section)
        warnings += _spaced_keys(o, section.name)
        scopes_key, scopes = self._scopes(section, match, notes)
        shorthand: dict[str, Any] = {"scope": scopes}
        template = self._template(section)
        if template:
            shorthand["template"] = template
        credential = self._identity(section, shorthand, notes, warnings)
        loc = self.at(section, scopes_key) if scopes_key else self.at(section)
        inner = shorthand_policy(scope_as_resource(shorthand, loc, {}), loc, {})
        return Rule(
            name=section.name,
            index=index,
            match=match,
            policy=loader.compose(loader.DEFAULT_GLOBAL, inner),
            location=self.at(section),
            credential=credential,
            shorthand=True,
            scope=" ".join(map(str, scopes)) if isinstance(scopes, list) else str(scopes),
        )

    def _scopes(self, section: Section, match: MatchSpec, notes: list[str]) -> tuple[str | None, list[Any] | str]:
        """``(key as written, Scopes)``; Microsoft Graph without Scopes gets its ``.default`` scope."""
        key, scopes = _get(section.options, "Scopes")
        if key is None and match.host in GRAPH_HOSTS:
            notes.append("no Scopes: Microsoft Graph's app token scope https://graph.microsoft.com/.default, as "
                         "Microsoft.Identity.Web's Graph integration uses")  # fmt: skip
            return None, [f"https://{match.host}/.default"]
        if key is None:
            raise LoadError(
                self.at(section), f"section '{section.name}': no Scopes (the API's '<app id URI>/.default')"
            )
        return key, scopes if isinstance(scopes, list) else str(scopes)

    def _template(self, section: Section) -> str | None:
        """The header template ``ProtocolScheme`` stands for (None: Bearer, the default); PoP is an error."""
        key, scheme = _get(section.options, "ProtocolScheme")
        name = str(scheme).strip()
        if key is None or name.lower() == "bearer":
            return None
        if name.lower() in ("pop", "mtls_pop"):
            raise LoadError(
                self.at(section, key),
                f"section '{section.name}': ProtocolScheme {name} binds the token to the app's own key "
                "(proof-of-possession); a proxy cannot present that key, so only Bearer sections can be rules",
            )
        return f"{name} {{token}}"

    def _match(self, section: Section) -> MatchSpec:
        o = section.options
        base_key, base = _get(o, "BaseUrl")
        if not base_key or not isinstance(base, str) or not base.strip():
            raise LoadError(self.at(section), f"section '{section.name}': no BaseUrl")
        url = urlsplit(base.strip())
        if url.scheme.lower() not in ("http", "https") or not url.hostname:
            raise LoadError(
                self.at(section, base_key), f"section '{section.name}': BaseUrl '{base}' is not an http(s) URL"
            )
        try:
            port = url.port or (443 if url.scheme.lower() == "https" else 80)
        except ValueError:
            raise LoadError(self.at(section, base_key), f"section '{section.name}': bad port in '{base}'") from None
        _, relative = _get(o, "RelativePath")
        path = "/" + "/".join(p.strip("/") for p in (url.path, str(relative or "").split("?")[0]) if p.strip("/"))
        path = re.sub(r"/[^/]*[{\[*?].*$", "", path) or "/"  # a templated segment ({id}) ends the literal prefix
        method_key, method = _get(o, "HttpMethod")
        methods: frozenset[str] = frozenset()
        if method_key is not None:
            if not isinstance(method, str) or not _METHOD.match(method.strip()):
                raise LoadError(
                    self.at(section, method_key),
                    f"section '{section.name}': HttpMethod {method!r} is not an HTTP method",
                )
            methods = frozenset({method.strip().upper()})
        return MatchSpec(host=url.hostname.lower(), port=port, path=path, methods=methods, scheme=url.scheme.lower())

    def _identity(
        self, section: Section, shorthand: dict[str, Any], notes: list[str], warnings: list[str]
    ) -> CredentialSpec | None:
        """The managed identity (into ``shorthand``) or the app registration the section's token is for."""
        _, options = _get(section.options, "AcquireTokenOptions")
        options = options if isinstance(options, dict) else {}
        mi_key, mi = _get(options, "ManagedIdentity")
        tenant_key, tenant = _get(options, "Tenant")
        if mi_key is not None:
            if not isinstance(mi, dict):
                raise LoadError(
                    self.at(section, "AcquireTokenOptions", mi_key),
                    f"section '{section.name}': ManagedIdentity must be an object ({{}} = system-assigned)",
                )
            _, client_id = _get(mi, "UserAssignedClientId")
            warnings += _spaced_keys(mi, f"{section.name}:AcquireTokenOptions:ManagedIdentity")
            if client_id:
                shorthand["client_id"] = str(client_id).strip()
            if tenant_key is not None:
                notes.append("AcquireTokenOptions.Tenant is ignored: a managed identity's token is for its own tenant")
            return None
        _, auth_name = _get(options, "AuthenticationOptionsName")
        return self._app(section, str(auth_name or DEFAULT_AUTHENTICATION), str(tenant or "") or None, notes)

    def _app(self, section: Section, auth_name: str, tenant: str | None, notes: list[str]) -> CredentialSpec:
        auth_key, auth = _get(self.data, auth_name)
        if not isinstance(auth, dict):
            raise LoadError(
                self.at(section),
                f"section '{section.name}': no AcquireTokenOptions.ManagedIdentity, "
                f"and no '{auth_name}' section with the app's credentials",
            )
        where = self.pos.at((auth_key,), key=True)
        tenant = tenant or str(_get(auth, "TenantId")[1] or "").strip()
        client_id = str(_get(auth, "ClientId")[1] or "").strip()
        if not tenant or tenant.lower() in ("common", "organizations", "consumers"):
            raise LoadError(
                where,
                f"section '{auth_name}': app tokens need a TenantId (a tenant id or domain, not "
                f"'{tenant or 'missing'}'), or AcquireTokenOptions.Tenant in '{section.name}'",
            )
        if not client_id:
            raise LoadError(where, f"section '{auth_name}': no ClientId")
        candidates = self._client_credentials(auth)
        tried: list[str] = []
        for entry in candidates:
            _, kind = _get(entry, "SourceType")
            kind = str(kind or "")
            if self.client_credential and kind.lower() != self.client_credential.lower():
                continue
            spec = self._credential(entry, kind, tenant, client_id)
            if spec is not None:
                if len(candidates) > 1:
                    notes.append(f"credential: {kind} from '{auth_name}' (the first usable of {len(candidates)})")
                return spec
            tried.append(_UNSUPPORTED.get(kind.lower(), f"SourceType '{kind}'"))
        wanted = f" with SourceType {self.client_credential}" if self.client_credential else ""
        found = f" (found: {', '.join(tried)})" if tried else ""
        raise LoadError(
            where,
            f"section '{auth_name}': no client credential{wanted} this proxy can use{found}; "
            "use SignedAssertionFromManagedIdentity, SignedAssertionFilePath, ClientSecret or a certificate file "
            "(Path)",
        )

    @staticmethod
    def _client_credentials(auth: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """``ClientCredentials`` in order, then the legacy ``ClientSecret`` and ``ClientCertificates``."""
        _, listed = _get(auth, "ClientCredentials")
        out = [c for c in (listed or []) if isinstance(c, dict)]
        _, secret = _get(auth, "ClientSecret")
        if secret:
            out.append({"SourceType": "ClientSecret", "ClientSecret": secret})
        _, certificates = _get(auth, "ClientCertificates")
        out += [c for c in (certificates or []) if isinstance(c, dict)]
        return out

    def _credential(self, entry: Mapping[str, Any], kind: str, tenant: str, client_id: str) -> CredentialSpec | None:
        fields: dict[str, str] = {"tenant_id": tenant, "client_id": client_id}
        if kind.lower() == "signedassertionfrommanagedidentity":
            fields["type"] = FIC
            mi = _get(entry, "ManagedIdentityClientId")[1]
            if mi:
                fields["managed_identity_client_id"] = str(mi)
            exchange = str(_get(entry, "TokenExchangeUrl")[1] or "").removesuffix("/.default")
            if exchange in EXCHANGE_AUDIENCES:
                fields["audience"] = exchange
        elif kind.lower() == "clientsecret":
            secret = _get(entry, "ClientSecret")[1]
            if not secret:
                return None
            fields |= {"type": CLIENT_SECRET, "client_secret": str(secret)}
        elif kind.lower() == "signedassertionfilepath":
            fields["type"] = TOKEN_FILE
            token_file = _get(entry, "SignedAssertionFileDiskPath")[1]
            if token_file:
                fields["token_file"] = str(self.path.parent / str(token_file))
        elif kind.lower() == "path":
            disk = _get(entry, "CertificateDiskPath")[1]
            if not disk:
                return None
            fields |= {"type": CLIENT_CERTIFICATE, "certificate_path": str(self.path.parent / str(disk))}
        else:
            return None
        return parse_credential(fields)


# -- entry points --------------------------------------------------------------------------------------------------


def load_appsettings(
    path: str | Path,
    sections: Sequence[str] | None = None,
    *,
    client_credential: str | None = None,
    selected_at: Location | None = None,
) -> RulesConfig:
    """The rules an appsettings file stands for (``sections``: only these, by name, as written at ``selected_at``);
    the first error raises."""
    path = Path(path)
    data, pos = read_appsettings(path)
    converter = _Converter(path, data, pos, client_credential)
    chosen = _selected(downstream_sections(data), sections, selected_at or Location(str(path), 1, 1))
    rules = [converter.rule(section, i) for i, section in enumerate(chosen)]
    return RulesConfig(path=path, rules=rules, files=[path.resolve()])


@dataclass
class SectionReport:
    """What ``apim-mi validate`` says about one section: its rule, or the error, and notes."""

    section: Section
    location: Location
    rule: Rule | None = None
    error: LoadError | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def report_sections(path: Path) -> list[SectionReport]:
    """Every downstream-API section of the file, converted or not (raises only when the file cannot be read)."""
    data, pos = read_appsettings(path)
    converter = _Converter(path, data, pos)
    out = []
    for i, section in enumerate(downstream_sections(data)):
        entry = SectionReport(section, converter.at(section))
        try:
            entry.rule = converter.rule(section, i)
        except LoadError as e:
            entry.error = e
        entry.notes = converter.notes.get(section.name, [])
        entry.warnings = converter.warnings.get(section.name, [])
        out.append(entry)
    return out


def describe(rule: Rule) -> str:
    """One line: where the rule matches, the audience, and whose token it is."""
    m = rule.match
    methods = ",".join(sorted(m.methods)) or "any method"
    target = f"{m.scheme}://{m.host}:{m.port}{m.path} ({methods})"
    mi = next(s for s in rule.policy.statements() if s.name == "authentication-managed-identity")
    resource = mi.attrs["resource"].text
    if isinstance(rule.credential, CredentialSpec):
        who = str(rule.credential)
    else:
        client = mi.attr("client-id")
        who = f"managed identity {client} (user-assigned)" if client else "system-assigned managed identity"
    return f"{target} -> scope '{rule.scope}' (resource '{resource}'), {who}"


def validate_appsettings(path: Path, *, effective: bool = False) -> int:
    """``apim-mi validate appsettings.json``: every section's rule or located error; exit 0 ok, 1 warnings (or no
    section at all), 2 errors."""
    try:
        reports = report_sections(path)
    except LoadError as e:
        print(f"error: {e}")
        return 2
    rules = [r for r in reports if r.rule is not None]
    print(f"{path}: {len(reports)} downstream API section(s), {len(rules)} rule(s)")
    for r in reports:
        if r.rule is not None:
            print(f"  {r.location}: {r.section.name}: {describe(r.rule)}")
            if effective:
                from ..policy.loader import effective_policy_xml

                print("    " + effective_policy_xml(r.rule.policy).replace("\n", "\n    "))
        for note in r.notes:
            print(f"    note: {note}")
    errors = [r.error for r in reports if r.error is not None]
    warnings = [f"{r.location}: {w}" for r in reports for w in r.warnings]
    if not reports:
        warnings.append(f"{path}: no downstream API sections (a top-level section with BaseUrl, or DownstreamApis "
                        "entries): nothing to turn into rules")  # fmt: skip
    for e in errors:
        print(f"error: {e}")
    for w in warnings:
        print(f"warning: {w}")
    if errors:
        print(f"{len(errors)} error(s), {len(warnings)} warning(s)")
        return 2
    print(f"{len(warnings)} warning(s)" if warnings else "ok")
    return 1 if warnings else 0


def import_entries(value: Any) -> Iterable[Mapping[str, Any]]:
    """A rules file's ``import:`` value: one entry or a list of them."""
    return value if isinstance(value, list) else [value]
