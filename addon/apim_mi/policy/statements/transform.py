"""Policies that rewrite a message body: json-to-xml, xml-to-json, find-and-replace, xsl-transform, and
``set-body template="liquid"``.

They act on the request in inbound/backend and on the response in outbound/on-error (``message_of``). APIM does not
document its conversions' exact output; what is implemented here is inferred from the reference pages' examples and
real gateway output quoted in public write-ups (docs/policies.md lists each inference):

* json-to-xml: a root ``<Document>`` unless the JSON is one property holding an object (the reference's SOAP
  example), arrays as repeated elements, ``true`` → ``True`` (.NET), null → ``xsi:nil="true"``, names that are not
  XML names encoded as .NET's ``XmlConvert.EncodeName`` does (``_x0020_``).
* xml-to-json ``direct``: Newtonsoft's ``SerializeXNode`` shape with APIM's ``$`` for ``:`` in prefixed names
  (``soap$Envelope``, ``@xmlns$soap``), the XML declaration as top-level properties, ``@`` attributes, ``#text``
  for mixed content. ``javascript-friendly`` drops the declaration and namespace declarations.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ...errors import PolicyError
from ..context import Body, Context, Request, Response
from ..engine import UNVERIFIED, PolicyRun, Scope, evaluate_string
from ..model import Statement
from ._common import bool_attr, current_response, str_attr

XSI = "http://www.w3.org/2001/XMLSchema-instance"
INFERRED = {"emulator": "conversion rules inferred: APIM does not document them"}


def message_of(run: PolicyRun, scope: Scope) -> Request | Response:
    """The request in inbound/backend (or a send-request being built), the response afterwards."""
    return scope.request if scope.request is not None else current_response(run)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def is_media(value: str, subtype: str) -> bool:
    """``application/<subtype>``, ``text/<subtype>`` or ``…+<subtype>`` (no wildcards)."""
    m = _media_type(value)
    return "*" not in m and (m in (f"application/{subtype}", f"text/{subtype}") or m.endswith(f"+{subtype}"))


def _accepts(request: Request, subtype: str) -> bool:
    """The client's Accept header asks for ``subtype`` (a q=0 entry does not count)."""
    for header in request.headers.get_all("Accept"):
        for item in header.split(","):
            media, *params = item.split(";")
            q = next((p.split("=", 1)[1] for p in params if p.strip().lower().startswith("q=")), "1")
            try:
                weight = float(q)
            except ValueError:
                weight = 1.0
            if weight > 0 and is_media(media, subtype):
                return True
    return False


def _body_text(message: Request | Response) -> str:
    return (message.body.content if message.body is not None else b"").decode("utf-8-sig", "replace")


def _replace_body(message: Request | Response, data: bytes, content_type: str | None) -> None:
    message.body = Body(data, content_type or (message.body.content_type if message.body else None))
    if content_type:
        message.headers.set("Content-Type", [content_type])
    if "Content-Length" in message.headers:
        message.headers.set("Content-Length", [str(len(data))])


async def _should_convert(run: PolicyRun, stmt: Statement, scope: Scope, source: str, target: str) -> str | None:
    """Why the conversion is skipped (``apply`` / ``consider-accept-header``), or None to convert."""
    apply = (await str_attr(run, stmt, "apply", scope) or "always").strip().lower()
    if apply not in ("always", f"content-type-{source}"):
        raise PolicyError(stmt.name, f"The 'apply' attribute must be 'always' or 'content-type-{source}' (got "
                          f"'{apply}').", "ExpressionValueEvaluationFailure")
    message = message_of(run, scope)
    if apply != "always" and not is_media(message.headers.get("Content-Type") or "", source):
        return f"Content-Type is not {source.upper()}; apply=\"content-type-{source}\"."
    if await bool_attr(run, stmt, "consider-accept-header", scope) and not _accepts(run.context.request, target):
        return f"the request's Accept header does not ask for {target.upper()}; consider-accept-header=\"true\"."
    return None


# ---------------------------------------------------------------------------------------------------- json-to-xml

_ISO_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})?$")


def _net_date(text: str) -> str:
    """Newtonsoft's parsed-date round trip: fractional seconds without trailing zeros (``FFFFFFF``)."""
    m = _ISO_DATE.match(text)
    if m is None:
        return text
    fraction = (m.group(2) or "").rstrip("0")
    return m.group(1) + (f".{fraction}" if fraction else "") + (m.group(3) or "")


def encode_name(name: str) -> str:
    """.NET ``XmlConvert.EncodeName``: characters not allowed in an XML name become ``_xHHHH_``."""
    from lxml import etree

    out = []
    for i, ch in enumerate(name):
        probe = ("a" + ch) if i else ch
        try:
            etree.QName(probe)
            ok = True
        except ValueError:
            ok = False
        if ch == "_" and name[i:i + 2] == "_x":
            ok = False
        out.append(ch if ok else f"_x{ord(ch):04X}_")
    return "".join(out) or "_"


class _JsonToXml:
    def __init__(self, separator: str, ns_prefix: str | None, attr_block: str | None, parse_date: bool) -> None:
        from lxml import etree

        self.etree = etree
        self.separator = separator or "_"
        self.ns_prefix = ns_prefix or "xmlns"
        self.attr_block = attr_block
        self.parse_date = parse_date

    def scalar(self, value: Any) -> str:
        if isinstance(value, bool):
            return "True" if value else "False"
        if isinstance(value, str):
            return _net_date(value) if self.parse_date else value
        return str(value)

    def _qname(self, name: str, nsmap: dict[str | None, str]) -> str:
        prefix, sep, local = name.partition(self.separator)
        if sep and prefix in nsmap and local:
            return f"{{{nsmap[prefix]}}}{encode_name(local)}"
        return encode_name(name)

    def _declarations(self, obj: dict[str, Any], inherited: dict[str | None, str]) -> dict[str | None, str]:
        nsmap = dict(inherited)
        for key, value in obj.items():
            if key == self.ns_prefix and isinstance(value, str):
                nsmap[None] = value
            elif key.startswith(self.ns_prefix + self.separator) and isinstance(value, str):
                nsmap[key[len(self.ns_prefix) + len(self.separator):]] = value
        return nsmap

    def element(self, parent: Any, name: str, value: Any, nsmap: dict[str | None, str]) -> None:
        if isinstance(value, list):
            if not value:
                parent.append(self.etree.Element(self._qname(name, nsmap)))
            for item in value:
                self.element(parent, name, item, nsmap)
            return
        own = self._declarations(value, nsmap) if isinstance(value, dict) else nsmap
        fresh = {k: v for k, v in own.items() if nsmap.get(k) != v}
        el = self.etree.SubElement(parent, self._qname(name, own), nsmap=fresh or None)
        self.fill(el, value, own)

    def fill(self, el: Any, value: Any, nsmap: dict[str | None, str]) -> None:
        if value is None:
            el.set(f"{{{XSI}}}nil", "true")
        elif isinstance(value, dict):
            for key, child in value.items():
                if key == self.ns_prefix or key.startswith(self.ns_prefix + self.separator):
                    continue
                if self.attr_block is not None and key == self.attr_block and isinstance(child, dict):
                    for aname, avalue in child.items():
                        el.set(self._qname(aname, nsmap), "" if avalue is None else self.scalar(avalue))
                elif key == "#text":
                    el.text = (el.text or "") + self.scalar(child)
                else:
                    self.element(el, key, child, nsmap)
        else:
            el.text = self.scalar(value)

    def document(self, data: Any) -> bytes:
        etree = self.etree
        if isinstance(data, dict) and len(data) == 1:
            (name, value), = data.items()
            if isinstance(value, dict):
                holder = etree.Element("holder")
                self.element(holder, name, value, {})
                return etree.tostring(holder[0], encoding="utf-8")
        root = etree.Element("Document")
        if isinstance(data, dict):
            self.fill(root, data, {})
        elif isinstance(data, list):
            for item in data:
                self.element(root, "Array", item, {})
        else:
            self.fill(root, data, {})
        return etree.tostring(root, encoding="utf-8")


def json_to_xml_bytes(text: str, *, separator: str = "_", ns_prefix: str | None = None,
                      attr_block: str | None = None, parse_date: bool = True) -> bytes:  # fmt: skip
    """JSON text → XML bytes with APIM's (inferred) conventions; raises ValueError on invalid JSON."""
    data = json.loads(text, parse_float=Decimal) if text.strip() else None
    return _JsonToXml(separator, ns_prefix, attr_block, parse_date).document(data)


async def json_to_xml(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    skipped = await _should_convert(run, stmt, scope, "json", "xml")
    if skipped is not None:
        run.trace.add(scope.section, stmt.name, {"message": f"Conversion skipped: {skipped}", **UNVERIFIED})
        return
    message = message_of(run, scope)
    try:
        xml = json_to_xml_bytes(
            _body_text(message),
            separator=await str_attr(run, stmt, "namespace-separator", scope) or "_",
            ns_prefix=await str_attr(run, stmt, "namespace-prefix", scope),
            attr_block=await str_attr(run, stmt, "attribute-block-name", scope),
            parse_date=await bool_attr(run, stmt, "parse-date", scope),
        )
    except ValueError as e:
        raise PolicyError(stmt.name, f"The body is not valid JSON: {e}", "JsonToXmlConversionFailure") from None
    _replace_body(message, xml, "application/xml")
    run.trace.add(scope.section, stmt.name, {"message": f"Body was converted from JSON to XML ({len(xml)} bytes).",
                                             **INFERRED})


# ---------------------------------------------------------------------------------------------------- xml-to-json


def _json_name(qname: str, nsmap: dict[str | None, str]) -> str:
    """``{ns}local`` → ``prefix$local`` (APIM writes ``:`` as ``$``)."""
    if not qname.startswith("{"):
        return qname
    uri, local = qname[1:].split("}", 1)
    prefix = next((p for p, u in nsmap.items() if u == uri and p is not None), None)
    return f"{prefix}${local}" if prefix else local


def _element_json(el: Any, friendly: bool, always_array: bool) -> Any:
    parent_ns = el.getparent().nsmap if el.getparent() is not None else {}
    out: dict[str, Any] = {}
    if not friendly:
        for prefix, uri in el.nsmap.items():
            if parent_ns.get(prefix) != uri:
                out["@xmlns" if prefix is None else f"@xmlns${prefix}"] = uri
    for name, value in el.attrib.items():
        if name == f"{{{XSI}}}nil" and value == "true" and not len(el) and not (el.text or "").strip():
            return None
        out["@" + _json_name(name, el.nsmap)] = value
    children = [c for c in el if isinstance(c.tag, str)]
    texts = [t for t in [el.text, *(c.tail for c in el)] if t and t.strip()]
    if not children and not out:
        return "".join(texts) if texts else None
    groups: dict[str, list[Any]] = {}
    for child in children:
        groups.setdefault(_json_name(child.tag, child.nsmap), []).append(_element_json(child, friendly, always_array))
    for name, values in groups.items():
        out[name] = values if len(values) > 1 or always_array else values[0]
    if texts:
        out["#text"] = "".join(t.strip() for t in texts) if children else "".join(texts)
    return out


def xml_to_json_value(text: str, *, friendly: bool, always_array: bool = False) -> dict[str, Any]:
    """XML text → the JSON object APIM's xml-to-json produces (inferred shape); raises ValueError on bad XML."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(text.strip().encode(), parser)
    except etree.XMLSyntaxError as e:
        raise ValueError(str(e)) from None
    out: dict[str, Any] = {}
    if not friendly:
        decl = re.match(r"\s*<\?xml\s+([^?]*)\?>", text)
        for name, value in re.findall(r"([\w.-]+)\s*=\s*[\"']([^\"']*)[\"']", decl.group(1) if decl else ""):
            out[name] = value
    out[_json_name(root.tag, root.nsmap)] = _element_json(root, friendly, always_array)
    return out


async def xml_to_json(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    kind = (await str_attr(run, stmt, "kind", scope) or "").strip().lower()
    if kind not in ("direct", "javascript-friendly"):
        raise PolicyError(stmt.name, f"The 'kind' attribute must be 'direct' or 'javascript-friendly' (got '{kind}').",
                          "ExpressionValueEvaluationFailure")
    skipped = await _should_convert(run, stmt, scope, "xml", "json")
    if skipped is not None:
        run.trace.add(scope.section, stmt.name, {"message": f"Conversion skipped: {skipped}", **UNVERIFIED})
        return
    message = message_of(run, scope)
    always_array = await bool_attr(run, stmt, "always-array-child-elements", scope)
    try:
        value = xml_to_json_value(_body_text(message), friendly=kind == "javascript-friendly",
                                  always_array=always_array)
    except ValueError as e:
        raise PolicyError(stmt.name, f"The body is not valid XML: {e}", "XmlToJsonConversionFailure") from None
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    _replace_body(message, data, "application/json")
    run.trace.add(scope.section, stmt.name, {"message": f"Body was converted from XML to JSON ({kind}, {len(data)} "
                                             "bytes).", **INFERRED})


# ----------------------------------------------------------------------------------------------- find-and-replace


async def find_and_replace(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Every occurrence of ``from`` in the body becomes ``to`` (ordinal, case-sensitive)."""
    find = await str_attr(run, stmt, "from", scope) or ""
    to = await str_attr(run, stmt, "to", scope) or ""
    message = message_of(run, scope)
    text = _body_text(message)
    count = text.count(find) if find else 0
    if count:
        _replace_body(message, text.replace(find, to).encode(), None)
    run.trace.add(scope.section, stmt.name, {"message": f"Replaced {count} occurrence(s) of '{find}' in the body.",
                                             **UNVERIFIED})


def _roots(run: PolicyRun) -> tuple[str, str]:
    """(backend root, gateway root) for redirect-content-urls: the base URL set-backend-service chose, else the API's
    serviceUrl, else the backend URL's origin; the caller's origin plus the API's path (apim-mi's gateway URL)."""
    from .routing import BASE

    request, api = run.context.request, run.context.api
    backend = run.extras.get(BASE) or (str(api.service_url) if api is not None and api.service_url else "") or \
        f"{request.url.scheme}://{request.url.authority}"  # fmt: skip
    original = request.original_url or request.url
    suffix = "/" + api.path.strip("/") if api is not None and api.path.strip("/") else ""
    return backend.rstrip("/"), f"{original.scheme}://{original.authority}{suffix}"


async def redirect_content_urls(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """Links to the backend in the response body point to the gateway (outbound); inbound, the opposite."""
    backend, gateway = _roots(run)
    find, to = (gateway, backend) if scope.section == "inbound" else (backend, gateway)
    message = message_of(run, scope)
    text = _body_text(message)
    count = len(re.findall(re.escape(find), text, re.IGNORECASE)) if find != to else 0
    if count:
        _replace_body(message, re.sub(re.escape(find), lambda _: to, text, flags=re.IGNORECASE).encode(), None)
    run.trace.add(scope.section, stmt.name, {"message": f"Replaced {count} link(s) to '{find}' with '{to}'.",
                                             **UNVERIFIED})  # fmt: skip


# -------------------------------------------------------------------------------------------------- xsl-transform

_PARAMETER = re.compile(r"<parameter\s+parameter-name\s*=\s*([\"'])(.*?)\1\s*(?:/>|>(.*?)</parameter\s*>)", re.S)


@lru_cache(maxsize=64)
def _stylesheet(markup: str) -> Any:
    """The compiled XSLT (lxml, XSLT 1.0 like .NET's XslCompiledTransform), cached per stylesheet text."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        doc = etree.fromstring(markup.strip().encode(), parser)
        access = etree.XSLTAccessControl.DENY_ALL
        return etree.XSLT(doc, access_control=access)
    except (etree.XMLSyntaxError, etree.XSLTParseError) as e:
        raise ValueError(str(e)) from None


def split_xsl_markup(markup: str) -> tuple[list[tuple[str, str]], str]:
    """xsl-transform's content → ([(parameter-name, raw value)], stylesheet markup)."""
    from ..rawxml import xml_unescape

    params = [(xml_unescape(m.group(2)), m.group(3) or "") for m in _PARAMETER.finditer(markup)]
    return params, _PARAMETER.sub("", markup)


async def _parameter_value(run: PolicyRun, raw: str, stmt: Statement, scope: Scope) -> str:
    from ..expressions import ExpressionSyntaxError, compile_expression
    from ..model import Value
    from ..rawxml import xml_unescape

    text = raw.strip()
    if text.startswith("@"):
        try:
            expr = compile_expression(xml_unescape(text), stmt.location)
        except ExpressionSyntaxError as e:
            raise PolicyError("xsl-transform", f"A parameter's expression does not parse: {e}",
                              "ExpressionValueEvaluationFailure") from None
        return await evaluate_string(run, Value(text, stmt.location, expr), "xsl-transform", scope) or ""
    return xml_unescape(raw)


async def xsl_transform(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    from lxml import etree

    params, markup = split_xsl_markup(stmt.text.text if stmt.text is not None else "")
    try:
        transform = _stylesheet(markup)
    except ValueError as e:
        raise PolicyError("xsl-transform", f"The stylesheet is not valid XSLT: {e}", "XslTransformFailure") from None
    values = {name: etree.XSLT.strparam(await _parameter_value(run, raw, stmt, scope)) for name, raw in params}
    message = message_of(run, scope)
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        doc = etree.fromstring((message.body.content if message.body else b"").strip() or b"<empty/>", parser)
        result = transform(doc, **values)
    except (etree.XMLSyntaxError, etree.XSLTApplyError) as e:
        raise PolicyError("xsl-transform", f"The transformation failed: {e}", "XslTransformFailure") from None
    data = bytes(result)
    if data.endswith(b"\n"):  # libxslt ends the document with a newline; .NET's transform writes none
        data = data[:-1]
    _replace_body(message, data, None)
    run.trace.add(scope.section, "xsl-transform", {
        "message": f"Body was transformed with the stylesheet ({len(data)} bytes, {len(values)} parameter(s)).",
        **UNVERIFIED,
    })


# ---------------------------------------------------------------------------------------------- set-body (liquid)


async def liquid_body(run: PolicyRun, stmt: Statement, scope: Scope, message: Request | Response) -> bytes:
    """Renders a ``template="liquid"`` body with APIM's objects (``body``, ``context``)."""
    from ._liquid import LiquidError, render

    template = stmt.text.text if stmt.text is not None else ""
    nil_null = (stmt.attr("xsi-nil") or "blank").strip().lower() == "null"
    try:
        return render(template, body=liquid_body_value(message, nil_null), context=liquid_context(run.context))
    except LiquidError as e:
        raise PolicyError("set-body", f"The Liquid template failed: {e}", "LiquidTemplateError") from None


def liquid_body_value(message: Request | Response, nil_null: bool) -> Any:
    """``body`` for Liquid: the JSON body, or an XML body as nested objects (``xsi:nil`` per the attribute)."""
    text = _body_text(message)
    if not text.strip():
        return None
    content_type = message.headers.get("Content-Type") or ""
    if not is_media(content_type, "xml"):
        try:
            return json.loads(text)
        except ValueError:
            if is_media(content_type, "json"):
                return None
    try:
        value = xml_to_json_value(text, friendly=True)
    except ValueError:
        return text
    return _strip_nil(value, nil_null)


def _strip_nil(value: Any, nil_null: bool) -> Any:
    if isinstance(value, dict):
        return {k.split("$")[-1]: _strip_nil(v, nil_null) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nil(v, nil_null) for v in value]
    if value is None:
        return None if nil_null else ""
    return value


def liquid_context(context: Context) -> dict[str, Any]:
    from ._liquid import context_object

    return context_object(context)


HANDLERS = {
    "json-to-xml": json_to_xml,
    "xml-to-json": xml_to_json,
    "find-and-replace": find_and_replace,
    "redirect-content-urls": redirect_content_urls,
    "xsl-transform": xsl_transform,
}
