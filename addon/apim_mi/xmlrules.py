"""Rules files in XML (SPEC §3.3): a bare APIM ``<policies>`` document, or the rule list in XML form.

A bare ``<policies>`` document (exported from Azure) applies to every request through the proxy: one rule with
host ``*`` and ``RulesConfig.applies_to_all``. The rule list mirrors ``rules.yaml`` field for field::

    <apim-mi credential="emulator" fragments="fragments">
      <named-value name="orders-app">api://00000000-0000-0000-0000-00000000a11c</named-value>
      <backend id="orders" url="https://orders.contoso.com/api"/>
      <policies> … </policies>                                  <!-- optional global scope -->
      <rule name="orders API" host="orders.contoso.com" path="/api/*" methods="GET,POST"
            resource="{{orders-app}}" client-id="11111111-1111-1111-1111-111111111111"/>
      <rule name="graph" host="graph.microsoft.com" scope="https://graph.microsoft.com/.default"/>
      <rule name="service bus" host="*.servicebus.windows.net" resource="https://servicebus.azure.net"
            template="{token}"/>
      <rule name="legacy" host="legacy.contoso.com" policy="policies/legacy.xml"/>
      <rule name="inline" host="inline.contoso.com">
        <policies> … real APIM policy XML, expressions unescaped … </policies>
      </rule>
    </apim-mi>

``<policies>`` blocks are cut out before the rest is parsed (APIM policy XML is often not well-formed) and loaded
by the policy loader with their position in this file, so every error reads ``file:line:column: message``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lxml import etree

from .backends import Backend
from .credentials import FIELDS, CredentialSpec
from .errors import LoadError, Location
from .rules import (
    CREDENTIAL_SOURCES,
    MatchSpec,
    Rule,
    RulesConfig,
    api_definition,
    app_credential_of,
    parse_host,
    scope_as_resource,
    shorthand_policy,
    substitute_named_values,
)

ROOT = "apim-mi"
_ROOT_ATTRS = {"credential", "fragments"}
_RULE_ATTRS = {
    "name", "host", "path", "methods", "scheme", "resource", "scope", "client-id", "header", "template",
    "exists-action", "ignore-error", "credential", "allow-http", "policy", "openapi",
}  # fmt: skip
_SHORTHAND = ("resource", "scope", "client-id", "header", "template", "exists-action", "ignore-error")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_METHOD = re.compile(r"^[A-Za-z]+$")
_POLICIES_OPEN = re.compile(r"<policies(?=[\s>/])")
_POLICIES_CLOSE = "</policies>"
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def load_xml_rules(text: str, path: Path) -> RulesConfig:
    """An ``.xml`` rules file → ``RulesConfig``; every error is a ``LoadError`` with file:line:column."""
    from .policy import loader

    display = str(path)
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    root_name = _root_name(text)
    if root_name == "policies":
        policy = loader.load_policy_text(
            text, source=display, fragments_dir=_fragments_dir(path, None), scope="global"
        )
        rule = Rule(
            name="policies (all requests)",
            index=0,
            match=MatchSpec(host="*"),
            policy=loader.compose(loader.DEFAULT_GLOBAL, policy),
            location=Location(display, 1, 1),
        )
        return RulesConfig(path=path, rules=[rule], files=[path.resolve()], applies_to_all=True)
    if root_name != ROOT:
        raise LoadError(
            Location(display, 1, 1),
            f"an XML rules file must have the root element <{ROOT}> (rule list) or <policies> (a policy for every "
            f"request), not <{root_name or '?'}>",
        )
    return _RuleList(text, path).load()


def _root_name(text: str) -> str:
    m = re.search(r"<([A-Za-z_][\w.\-]*)", _COMMENT.sub("", re.sub(r"<\?.*?\?>", "", text, flags=re.S)))
    return m.group(1) if m else ""


def _fragments_dir(path: Path, fragments: str | None) -> Path | None:
    if fragments:
        return (path.parent / fragments).resolve()
    return path.parent / "fragments" if (path.parent / "fragments").is_dir() else path.parent


class _RuleList:
    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.path = path
        self.file = str(path)
        self.lines = text.split("\n")
        self.blocks: list[tuple[str, int, int]] = []  # (policy text, line, column) in the file

    def loc(self, el: Any) -> Location:
        line = el.sourceline or 1
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        idx = src.find(f"<{el.tag}")
        return Location(self.file, line, idx + 2 if idx >= 0 else 1)

    def attr_loc(self, el: Any, name: str) -> Location:
        """Where ``name="`` is written in ``el``'s start tag (the element's location if not found)."""
        start = self.loc(el)
        for n in range(start.line - 1, min(start.line + 20, len(self.lines))):
            col = self.lines[n].find(f' {name}="', start.column if n == start.line - 1 else 0)
            if col >= 0:
                return Location(self.file, n + 1, col + 2)
        return start

    def _cut_policies(self) -> str:
        """Each ``<policies>…</policies>`` becomes ``<policies ref="n"/>`` plus the newlines it spanned."""
        masked = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), self.text)
        out: list[str] = []
        pos = 0
        for m in _POLICIES_OPEN.finditer(masked):
            if m.start() < pos:
                continue
            end = masked.find(_POLICIES_CLOSE, m.end())
            head_end = masked.find(">", m.end())
            if head_end >= 0 and masked[head_end - 1] == "/" and (end < 0 or head_end < end):
                end, close_len = head_end, 1  # <policies/>
            elif end < 0:
                raise LoadError(self._offset_loc(m.start()), "<policies> is not closed with </policies>")
            else:
                close_len = len(_POLICIES_CLOSE)
            block = self.text[m.start() : end + close_len]
            line, column = self._position(m.start())
            out.append(self.text[pos : m.start()])
            out.append(f'<policies ref="{len(self.blocks)}"/>' + "\n" * block.count("\n"))
            self.blocks.append((block, line, column))
            pos = end + close_len
        out.append(self.text[pos:])
        return "".join(out)

    def _position(self, offset: int) -> tuple[int, int]:
        before = self.text[:offset]
        return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1

    def _offset_loc(self, offset: int) -> Location:
        return Location(self.file, *self._position(offset))

    def load(self) -> RulesConfig:
        from .policy import loader

        skeleton = self._cut_policies()
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, huge_tree=False)
        try:
            root = etree.fromstring(skeleton.encode(), parser)
        except etree.XMLSyntaxError as e:
            line, column = e.position if e.position else (1, 1)
            raise LoadError(Location(self.file, line, column), f"not well-formed XML: {e.msg}") from None
        self._check_attrs(root, _ROOT_ATTRS)
        credential: str | CredentialSpec | None = root.get("credential")
        if credential is not None and credential not in CREDENTIAL_SOURCES:
            raise LoadError(self.loc(root), f"credential '{credential}' is not one of: {', '.join(CREDENTIAL_SOURCES)}")
        app_element = None
        fragments_dir = _fragments_dir(self.path, root.get("fragments"))
        named: dict[str, str] = {}
        backends: dict[str, tuple[str, Location]] = {}
        files = [self.path.resolve()]
        outer = loader.DEFAULT_GLOBAL
        rules: list[Rule] = []
        for el in root:
            if not isinstance(el.tag, str):
                continue
            if el.tag == "named-value":
                self._check_attrs(el, {"name"})
                name = (el.get("name") or "").strip()
                if not name:
                    raise LoadError(self.loc(el), "<named-value> needs a name attribute")
                if name in named:
                    raise LoadError(self.loc(el), f"named value '{name}' is defined twice")
                named[name] = el.text or ""
            elif el.tag == "backend":
                self._check_attrs(el, {"id", "url"})
                bid, url = el.get("id") or "", el.get("url") or ""
                if not bid or not url:
                    raise LoadError(self.loc(el), "<backend> needs id and url attributes")
                backends[bid] = (url, self.loc(el))
            elif el.tag == "policies":
                if rules:
                    raise LoadError(self.loc(el), "the global <policies> must come before the first <rule>")
                global_policy = self._policy(el, named, fragments_dir, "global")
                outer = loader.compose(loader.DEFAULT_GLOBAL, global_policy)
            elif el.tag == "rule":
                rules.append(self._rule(el, len(rules), named, fragments_dir, outer, files))
            elif el.tag == "credential":
                if credential is not None or app_element is not None:
                    raise LoadError(self.loc(el), "the file's credential is given twice (attribute or <credential>)")
                app_element = el
            else:
                raise LoadError(
                    self.loc(el),
                    f"unknown element <{el.tag}> (allowed: named-value, backend, credential, policies, rule)",
                )
        if app_element is not None:
            credential = self._credential(app_element, named)
        resolved = {}
        for bid, (url, loc) in backends.items():
            url = substitute_named_values(url, named, loc)
            if not re.match(r"^https?://", url):
                raise LoadError(loc, f"backend '{bid}': url must be an absolute http(s) URL (got '{url}')")
            resolved[bid] = Backend(bid, url=url)
        return RulesConfig(
            path=self.path, rules=rules, credential=credential, named_values=named, files=files, backends=resolved
        )

    def _credential(self, el: Any, named: dict[str, str]) -> CredentialSpec:
        """``<credential type="managed-identity-fic" tenant-id=… client-id=… …/>``: YAML's credential mapping with
        the fields as kebab-case attributes."""
        kind = el.get("type", "")
        if kind not in FIELDS:
            raise LoadError(self.loc(el), f"<credential> type '{kind}' is not one of: {', '.join(FIELDS)}")
        self._check_attrs(el, {"type", "tenant-id", "client-id"} | {f.replace("_", "-") for f in FIELDS[kind][0]})
        if len(el) or (el.text or "").strip():
            raise LoadError(self.loc(el), "<credential> holds only attributes")
        fields = {name.replace("-", "_"): value for name, value in el.attrib.items()}
        return app_credential_of(fields, self.loc(el), named, self.path.parent)

    def _check_attrs(self, el: Any, allowed: set[str]) -> None:
        for name in el.attrib:
            if name not in allowed:
                raise LoadError(
                    self.loc(el), f"unknown attribute '{name}' on <{el.tag}> (allowed: {', '.join(sorted(allowed))})"
                )

    def _policy(self, el: Any, named: dict[str, str], fragments_dir: Path | None, scope: str) -> Any:
        from .policy import loader

        block, line, column = self.blocks[int(el.get("ref"))]
        return loader.load_policy_text(
            block,
            source=self.file,
            named_values=named,
            fragments_dir=fragments_dir,
            scope=scope,
            origin=loader.Origin(line, column),
        )

    def _rule(
        self, el: Any, index: int, named: dict[str, str], fragments_dir: Path | None, outer: Any, files: list[Path]
    ) -> Rule:
        from .policy import loader

        self._check_attrs(el, _RULE_ATTRS)
        loc = self.loc(el)
        a = {k: v for k, v in el.attrib.items()}
        children = [c for c in el if isinstance(c.tag, str)]
        for c in children:
            if c.tag not in ("policies", "credential"):
                raise LoadError(self.loc(c), f"unknown element <{c.tag}> in <rule> (only <policies> and <credential> "
                                             "are allowed)")  # fmt: skip
        inline = [c for c in children if c.tag == "policies"]
        apps = [c for c in children if c.tag == "credential"]
        if len(apps) > 1 or (apps and "credential" in a):
            raise LoadError(self.loc(apps[-1]), "the rule's credential is given twice (attribute or <credential>)")
        if len(inline) > 1:
            raise LoadError(self.loc(inline[1]), "a <rule> holds at most one <policies>")
        if (el.text or "").strip():
            raise LoadError(loc, "<rule> cannot contain text")
        has_policy = bool(inline) or "policy" in a
        shorthand = [k for k in _SHORTHAND if k in a]
        if has_policy and shorthand:
            raise LoadError(loc, f"a policy cannot be combined with the shorthand attribute(s) {', '.join(shorthand)}; "
                                 "put them in the policy")  # fmt: skip
        if bool(inline) and "policy" in a:
            raise LoadError(loc, "give the policy either as policy=\"file\" or as an inline <policies>, not both")
        if not has_policy and "resource" not in a and "scope" not in a:
            raise LoadError(loc, "a rule needs either resource=\"…\" or scope=\"…/.default\" (shorthand) or a policy "
                                 "(policy=\"file\" or an inline <policies>)")  # fmt: skip
        if "resource" in a and "scope" in a:
            raise LoadError(loc, "resource (v1) and scope (v2) name the same audience: give one of them")
        match = self._match(a, loc)
        for flag in ("ignore-error", "allow-http"):
            if flag in a and a[flag] not in ("true", "false"):
                raise LoadError(loc, f"{flag} must be true or false (got '{a[flag]}')")
        if "credential" in a and a["credential"] not in CREDENTIAL_SOURCES:
            raise LoadError(loc, f"credential '{a['credential']}' is not one of: {', '.join(CREDENTIAL_SOURCES)}")
        if inline:
            inner = self._policy(inline[0], named, fragments_dir, "api")
        elif "policy" in a:
            policy_path = (self.path.parent / a["policy"]).resolve()
            if not policy_path.is_file():
                raise LoadError(loc, f"policy file '{a['policy']}' not found (looked in {policy_path.parent})")
            files.append(policy_path)
            inner = loader.load_policy_file(policy_path, named_values=named, fragments_dir=fragments_dir)
        else:
            raw = scope_as_resource(self._shorthand(a, loc), self.attr_loc(el, "scope"), named)
            inner = shorthand_policy(raw, loc, named)
        composed = loader.compose(outer, inner)
        if "openapi" in a:
            where = self.attr_loc(el, "openapi")
            composed.api_definition = api_definition(a["openapi"], self.path.parent, where, files)
        return Rule(
            name=a.get("name") or f"rule {index + 1}",
            index=index,
            match=match,
            policy=composed,
            location=loc,
            credential=self._credential(apps[0], named) if apps else a.get("credential"),
            allow_http=a.get("allow-http") == "true",
            shorthand=not has_policy,
            scope=a.get("scope"),
        )

    def _match(self, a: dict[str, str], loc: Location) -> MatchSpec:
        try:
            host, port = parse_host(a.get("host", "*"))
        except ValueError as e:
            raise LoadError(loc, f"host: {e}") from None
        path = a.get("path", "/")
        if not path.startswith("/"):
            raise LoadError(loc, f"path must start with / (got '{path}')")
        if "[" in path or "]" in path:
            raise LoadError(loc, "path: only '*' and '?' are glob characters")
        methods = [m.strip().upper() for m in a.get("methods", "").split(",") if m.strip()]
        for m in methods:
            if not _METHOD.match(m):
                raise LoadError(loc, f"methods: '{m}' is not an HTTP method (comma-separated list)")
        scheme = a.get("scheme")
        if scheme is not None and scheme not in ("http", "https"):
            raise LoadError(loc, f"scheme must be http or https (got '{scheme}')")
        return MatchSpec(host=host, port=port, path=path, methods=frozenset(methods), scheme=scheme)

    def _shorthand(self, a: dict[str, str], loc: Location) -> dict[str, Any]:
        field = "scope" if "scope" in a else "resource"
        raw: dict[str, Any] = {field: a[field]}
        if not a[field].strip():
            raise LoadError(loc, f"{field} must not be empty")
        if "client-id" in a:
            raw["client_id"] = a["client-id"]
        if "header" in a:
            if not _HEADER_NAME.match(a["header"]):
                raise LoadError(loc, f"header: '{a['header']}' is not a valid HTTP header name")
            raw["header"] = a["header"]
        if "template" in a:
            if "{token}" not in a["template"]:
                raise LoadError(loc, "template: the template must contain the placeholder {token}")
            raw["template"] = a["template"]
        if "exists-action" in a:
            if a["exists-action"] not in ("override", "skip", "append"):
                raise LoadError(loc, f"exists-action must be override, skip or append (got '{a['exists-action']}')")
            raw["exists_action"] = a["exists-action"]
        if "ignore-error" in a:
            raw["ignore_error"] = a["ignore-error"] == "true"
        return raw
