"""Newtonsoft.Json.Linq (JToken, JObject, JArray, JValue, JProperty) with Newtonsoft's text formats.

``ToString()`` is indented with two spaces (Newtonsoft's default for tokens); ``ToString(Formatting.None)`` and
``JsonConvert.SerializeObject`` are compact. Parsing keeps property order; a repeated property name replaces the
earlier value (Newtonsoft's default).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from .dotnet import Char, Long, NetException, format_datetime, format_double, format_guid, format_timespan

MAX_JSON_DEPTH = 64


class JToken:
    """Base of every JSON token; ``parent`` is the containing JObject/JArray/JProperty."""

    parent: JToken | None = None
    type_name = "JToken"

    def children(self) -> list[JToken]:
        return []

    def deep_clone(self) -> JToken:
        raise NotImplementedError

    def to_json(self, indent: bool) -> str:
        out: list[str] = []
        _write(self, out, indent, 0)
        return "".join(out)

    def __str__(self) -> str:
        return self.to_json(True)

    @property
    def path(self) -> str:
        parts: list[str] = []
        node: JToken | None = self
        while node is not None and node.parent is not None:
            p = node.parent
            if isinstance(p, JProperty):
                name = p.name
                parts.append(name if re.fullmatch(r"[A-Za-z_][\w]*", name) else f"['{name}']")
                node = p.parent
                continue
            if isinstance(p, JArray):
                parts.append(f"[{_index_of(p.items, node)}]")
            node = p
        out = ""
        for seg in reversed(parts):
            out += seg if seg.startswith("[") or not out else "." + seg
        return out

    def remove(self) -> None:
        p = self.parent
        if p is None:
            raise NetException("System.InvalidOperationException", "The parent is missing.")
        if isinstance(p, JObject) and isinstance(self, JProperty):
            p.remove(self.name)
        elif isinstance(p, JArray):
            p.items.pop(_index_of(p.items, self))
            self.parent = None
        else:
            raise NetException("System.InvalidOperationException", "Cannot add or remove items from JProperty.")

    def get_item(self, key: Any) -> JToken | None:
        raise NetException("System.InvalidOperationException", f"Cannot access child value on {type(self).__name__}.")


def _index_of(items: list[JToken], node: JToken) -> int:
    for i, x in enumerate(items):
        if x is node:
            return i
    raise NetException("System.InvalidOperationException", "Token not found in parent.")


class JValue(JToken):
    """A primitive JSON value: str, int (Int64), float, bool, None, or a date/Guid/TimeSpan kept as text type."""

    type_name = "JValue"

    def __init__(self, value: Any) -> None:
        if isinstance(value, Char):
            value = str(value)
        self.value = value

    @property
    def kind(self) -> str:
        v = self.value
        if v is None:
            return "Null"
        if isinstance(v, bool):
            return "Boolean"
        if isinstance(v, int):
            return "Integer"
        if isinstance(v, float | Decimal):
            return "Float"
        if isinstance(v, str):
            return "String"
        if isinstance(v, datetime):
            return "Date"
        if isinstance(v, UUID):
            return "Guid"
        if isinstance(v, timedelta):
            return "TimeSpan"
        if isinstance(v, bytes | bytearray):
            return "Bytes"
        return "String"

    def deep_clone(self) -> JValue:
        return JValue(self.value)

    def __str__(self) -> str:
        """``JValue.ToString()``: the value's own .NET text, not JSON (strings unquoted, ``True``)."""
        v = self.value
        if v is None:
            return ""
        if isinstance(v, bool):
            return "True" if v else "False"
        if isinstance(v, float):
            return format_double(v)
        if isinstance(v, datetime):
            return format_datetime(v, None)
        if isinstance(v, UUID):
            return format_guid(v)
        if isinstance(v, timedelta):
            return format_timespan(v)
        return str(v)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JValue):
            a, b = self.value, other.value
            return isinstance(a, bool) == isinstance(b, bool) and a == b
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)


class JProperty(JToken):
    type_name = "JProperty"

    def __init__(self, name: str, value: Any = None) -> None:
        self.name = name
        self._value: JToken = JValue(None)
        self.value = value

    @property
    def value(self) -> JToken:
        return self._value

    @value.setter
    def value(self, v: Any) -> None:
        tok = from_object(v)
        if tok.parent is not None:
            tok = tok.deep_clone()
        tok.parent = self
        self._value = tok

    def children(self) -> list[JToken]:
        return [self._value]

    def deep_clone(self) -> JProperty:
        return JProperty(self.name, self._value.deep_clone())


class JContainer(JToken):
    type_name = "JContainer"


class JObject(JContainer):
    type_name = "JObject"

    def __init__(self, *content: Any) -> None:
        self.props: dict[str, JProperty] = {}
        for c in content:
            self.add_content(c)

    def add_content(self, c: Any) -> None:
        """``new JObject(content…)`` / ``Add(JProperty)``: properties, or enumerables of them."""
        if c is None:
            return
        if isinstance(c, JProperty):
            if c.name in self.props:
                raise NetException(
                    "System.ArgumentException",
                    f"Can not add property {c.name} to JObject. Property with the same name already exists on object.",
                )
            p = c.deep_clone() if c.parent is not None else c
            p.parent = self
            self.props[p.name] = p
        elif isinstance(c, JObject):
            for p in list(c.props.values()):
                self.add_content(p.deep_clone())
        elif isinstance(c, list | tuple):
            for x in c:
                self.add_content(x)
        else:
            raise NetException("System.ArgumentException", f"Can not add {type_of_token(from_object(c))} to JObject.")

    def get_item(self, key: Any) -> JToken | None:
        if not isinstance(key, str):
            raise NetException(
                "System.ArgumentException",
                f"Accessed JObject values with invalid key value: {key}. Object property name expected.",
            )
        p = self.props.get(key)
        return p.value if p is not None else None

    def set_item(self, key: str, value: Any) -> None:
        p = self.props.get(key)
        if p is None:
            p = JProperty(key, value)
            p.parent = self
            self.props[key] = p
        else:
            p.value = value

    def add(self, name: str, value: Any) -> None:
        if name in self.props:
            raise NetException(
                "System.ArgumentException",
                f"Can not add property {name} to JObject. Property with the same name already exists on object.",
            )
        self.set_item(name, value)

    def remove(self, name: str) -> bool:  # type: ignore[override]
        p = self.props.pop(name, None)
        if p is None:
            return False
        p.parent = None
        return True

    def children(self) -> list[JToken]:
        return list(self.props.values())

    def deep_clone(self) -> JObject:
        o = JObject()
        for p in self.props.values():
            o.add_content(p.deep_clone())
        return o


class JArray(JContainer):
    type_name = "JArray"

    def __init__(self, *content: Any) -> None:
        self.items: list[JToken] = []
        for c in content:
            if isinstance(c, list | tuple) and not isinstance(c, JToken):
                for x in c:
                    self.add(x)
            else:
                self.add(c)

    def add(self, value: Any) -> None:
        tok = from_object(value)
        if tok.parent is not None:
            tok = tok.deep_clone()
        tok.parent = self
        self.items.append(tok)

    def get_item(self, key: Any) -> JToken | None:
        if isinstance(key, bool) or not isinstance(key, int):
            raise NetException(
                "System.ArgumentException",
                f"Accessed JArray values with invalid key value: {key!r}. Int32 array index expected.",
            )
        if not 0 <= key < len(self.items):
            raise NetException(
                "System.ArgumentOutOfRangeException",
                "Index was out of range. Must be non-negative and less than the size of the collection. "
                "(Parameter 'index')",
            )
        return self.items[key]

    def set_item(self, key: int, value: Any) -> None:
        self.get_item(key)
        tok = from_object(value)
        if tok.parent is not None:
            tok = tok.deep_clone()
        tok.parent = self
        self.items[key] = tok

    def children(self) -> list[JToken]:
        return list(self.items)

    def deep_clone(self) -> JArray:
        a = JArray()
        for x in self.items:
            a.add(x.deep_clone())
        return a


def type_of_token(t: JToken) -> str:
    if isinstance(t, JValue):
        return t.kind
    return {"JObject": "Object", "JArray": "Array", "JProperty": "Property"}.get(t.type_name, t.type_name)


# --- conversion ---------------------------------------------------------------------------------------------


def from_object(v: Any, depth: int = 0) -> JToken:
    """``JToken.FromObject`` for the values expressions produce (primitives, lists, dicts, anonymous objects)."""
    from .runtime_types import AnonymousObject  # late import: runtime_types imports this module

    if depth > MAX_JSON_DEPTH:
        raise NetException("Newtonsoft.Json.JsonSerializationException", "Self referencing loop detected.")
    if isinstance(v, JToken):
        return v
    if v is None or isinstance(v, str | bool | int | float | Decimal | datetime | UUID | timedelta):
        return JValue(Long(v) if type(v) is int else v)
    if isinstance(v, bytes | bytearray):
        import base64

        return JValue(base64.b64encode(bytes(v)).decode())
    if isinstance(v, dict):
        o = JObject()
        for k, x in v.items():
            o.set_item(str(k), from_object(x, depth + 1))
        return o
    if isinstance(v, AnonymousObject):
        o = JObject()
        for k, x in v.members.items():
            o.set_item(k, from_object(x, depth + 1))
        return o
    if isinstance(v, list | tuple | set | frozenset):
        return JArray(*[from_object(x, depth + 1) for x in v])
    raise NetException(
        "Newtonsoft.Json.JsonSerializationException", f"Cannot serialize a value of type {type(v).__name__}."
    )


def to_python(t: JToken | None) -> Any:
    """Plain Python data for a token (used by ``ToObject``/``DeserializeObject<Dictionary…>``)."""
    if t is None:
        return None
    if isinstance(t, JValue):
        return t.value
    if isinstance(t, JObject):
        return {k: to_python(p.value) for k, p in t.props.items()}
    if isinstance(t, JArray):
        return [to_python(x) for x in t.items]
    if isinstance(t, JProperty):
        return to_python(t.value)
    return None


# --- parsing ------------------------------------------------------------------------------------------------


def _json_error(e: Exception, text: str) -> NetException:
    if isinstance(e, json.JSONDecodeError):
        return NetException(
            "Newtonsoft.Json.JsonReaderException",
            f"Unexpected character encountered while parsing value: {text[e.pos : e.pos + 1] or 'end'}. "
            f"Path '', line {e.lineno}, position {e.colno}.",
        )
    return NetException("Newtonsoft.Json.JsonReaderException", str(e))


def _build(v: Any, depth: int = 0) -> JToken:
    if depth > MAX_JSON_DEPTH:
        raise NetException("Newtonsoft.Json.JsonReaderException", "The reader's MaxDepth of 64 has been exceeded.")
    if isinstance(v, _Pairs):
        o = JObject()
        for k, x in v.pairs:
            o.set_item(k, _build(x, depth + 1))
        return o
    if isinstance(v, list):
        return JArray(*[_build(x, depth + 1) for x in v])
    if type(v) is int:
        return JValue(Long(v))
    return JValue(v)


class _Pairs:
    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def parse_json(text: Any, what: str = "JToken") -> JToken:
    """``JToken.Parse``: any JSON value."""
    if text is None:
        raise NetException("System.ArgumentNullException", "Value cannot be null. (Parameter 'json')")
    s = str(text)
    if not s.strip():
        raise NetException(
            "Newtonsoft.Json.JsonReaderException", f"Error reading {what} from JsonReader. Path '', line 0, position 0."
        )
    try:
        raw = json.loads(s, object_pairs_hook=_Pairs, parse_constant=_bad_constant)
    except (ValueError, RecursionError) as e:
        raise _json_error(e, s) from None
    return _build(raw)


def _bad_constant(name: str) -> Any:
    raise ValueError(f"Unexpected character encountered while parsing value: {name[0]}.")


def parse_object(text: Any) -> JObject:
    return _parse_as(text, JObject, "an object")


def parse_array(text: Any) -> JArray:
    return _parse_as(text, JArray, "an array")


def _parse_as[T: JContainer](text: Any, cls: type[T], what: str) -> T:
    """``JObject.Parse``/``JArray.Parse``: any JSON parses, then Newtonsoft rejects the wrong kind of top token."""
    tok = parse_json(text, cls.type_name)
    if not isinstance(tok, cls):
        raise NetException(
            "Newtonsoft.Json.JsonReaderException",
            f"Error reading {cls.type_name} from JsonReader. Current JsonReader item is not {what}: "
            f"{_start_name(tok)}. Path '', line 1, position 1.",
        )
    return tok


def _start_name(t: JToken) -> str:
    return {"JObject": "StartObject", "JArray": "StartArray"}.get(t.type_name, type_of_token(t))


# --- writing ------------------------------------------------------------------------------------------------

_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def quote_json(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ord(ch) < 0x20 or ch in "\u0085\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return '"NaN"' if math.isnan(v) else ('"Infinity"' if v > 0 else '"-Infinity"')
        s = format_double(v)
        return s if ("." in s or "E" in s) else s + ".0"
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return quote_json(format_datetime(v, "yyyy'-'MM'-'dd'T'HH':'mm':'ss.FFFFFFFK"))
    if isinstance(v, UUID):
        return quote_json(str(v))
    if isinstance(v, timedelta):
        return quote_json(format_timespan(v))
    return quote_json(str(v))


def _write(t: JToken, out: list[str], indent: bool, level: int) -> None:
    nl = "\n" + "  " * (level + 1) if indent else ""
    end = "\n" + "  " * level if indent else ""
    if isinstance(t, JValue):
        out.append(_scalar(t.value))
    elif isinstance(t, JProperty):
        out.append(quote_json(t.name) + (": " if indent else ":"))
        _write(t.value, out, indent, level)
    elif isinstance(t, JObject):
        if not t.props:
            out.append("{}")
            return
        out.append("{")
        for i, p in enumerate(t.props.values()):
            out.append(("," if i else "") + nl)
            _write(p, out, indent, level + 1)
        out.append(end + "}")
    elif isinstance(t, JArray):
        if not t.items:
            out.append("[]")
            return
        out.append("[")
        for i, x in enumerate(t.items):
            out.append(("," if i else "") + nl)
            _write(x, out, indent, level + 1)
        out.append(end + "]")


# --- SelectToken (JSONPath subset) --------------------------------------------------------------------------

_PATH_TOKEN = re.compile(
    r"\.\.|\.?([A-Za-z_$@][\w$@-]*|\*)|\[\s*'((?:[^'\\]|\\.)*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|"
    r"\[\s*(-?\d+)\s*\]|\[\s*\*\s*\]|\."
)


def select_tokens(root: JToken, path: str) -> list[JToken]:
    """``SelectTokens`` for ``$``, ``.name``, ``['name']``, ``[n]`` and ``*`` (no filters or recursive descent)."""
    p = path.strip()
    if p.startswith("$"):
        p = p[1:]
    current: list[JToken] = [root]
    pos = 0
    while pos < len(p):
        m = _PATH_TOKEN.match(p, pos)
        if m is None or m.end() == pos or m.group(0) in ("..", "."):
            raise NetException("Newtonsoft.Json.JsonException", f"Unexpected character while parsing path: {p[pos]}")
        pos = m.end()
        name = m.group(1) or m.group(2) or m.group(3)
        idx = m.group(4)
        nxt: list[JToken] = []
        for c in current:
            if name == "*" or m.group(0).replace(" ", "") == "[*]":
                if isinstance(c, JObject):
                    nxt.extend(prop.value for prop in c.props.values())
                elif isinstance(c, JArray):
                    nxt.extend(c.items)
            elif name is not None:
                if isinstance(c, JObject) and name in c.props:
                    nxt.append(c.props[name].value)
            elif idx is not None and isinstance(c, JArray):
                i = int(idx)
                if -len(c.items) <= i < len(c.items):
                    nxt.append(c.items[i])
        current = nxt
    return current


def iter_tokens(t: JToken) -> Iterator[JToken]:
    """What ``foreach`` yields: properties of an object, items of an array."""
    if isinstance(t, JObject):
        return iter(list(t.props.values()))
    if isinstance(t, JArray):
        return iter(list(t.items))
    if isinstance(t, JProperty):
        return iter([t.value])
    raise NetException("System.InvalidOperationException", f"Cannot access child value on {type(t).__name__}.")
