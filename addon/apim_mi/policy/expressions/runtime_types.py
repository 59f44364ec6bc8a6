"""The .NET type system as expressions see it: type names, ``is``/``as``/casts, ``ToString()`` and ``==``.

Also holds the small domain classes that have no Python counterpart (Jwt, BasicAuthCredentials, DateTimeOffset,
anonymous objects, Encoding, Regex results, Uri, StringBuilder, HashSet).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from .. import context as ctx
from .ast import TypeRef
from .dotnet import (
    Char,
    EnumValue,
    KeyValuePair,
    Long,
    NetException,
    NetTuple,
    format_datetime,
    format_double,
    format_guid,
    format_timespan,
    invalid_cast,
    is_integer,
    null_reference,
)
from .jsonlinq import JArray, JContainer, JObject, JProperty, JToken, JValue, type_of_token

# --- domain classes -----------------------------------------------------------------------------------------


@dataclass
class AnonymousObject:
    """``new { a = 1, b = "x" }``."""

    members: dict[str, Any]


@dataclass
class DateTimeOffset:
    """A ``DateTimeOffset``: an aware datetime (DateTime values are naive or UTC-aware ``datetime``)."""

    dt: datetime


@dataclass
class Jwt:
    """APIM's ``Jwt`` from ``AsJwt()``: decoded, never validated."""

    raw: str
    header: dict[str, Any]
    payload: dict[str, Any]

    @property
    def claims(self) -> ClaimsDict:
        out = ClaimsDict()
        for k, v in self.payload.items():
            vals = v if isinstance(v, list) else [v]
            out[k] = [_claim_text(x) for x in vals]
        return out

    def date(self, claim: str) -> datetime | None:
        v = self.payload.get(claim)
        if isinstance(v, int | float) and not isinstance(v, bool):
            try:
                return datetime.fromtimestamp(v, UTC)
            except (OverflowError, OSError, ValueError):
                return None
        return None


class ClaimsDict(dict[str, list[str]]):
    """``Jwt.Claims``: ``IReadOnlyDictionary<string, string[]>`` whose GetValueOrDefault joins with commas."""


def _claim_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _credentials(value: str, scheme: str) -> str:
    """``value`` less its optional ``scheme`` (lower case, with the space): AsJwt/AsBasic take either form."""
    s = value.strip()
    if s[: len(scheme)].lower() == scheme:
        s = s[len(scheme) :].strip()
    return s


def _b64url(s: str) -> bytes:
    s = s.strip()
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_jwt(value: str | None) -> Jwt | None:
    """``AsJwt()``: a JWS compact token, with or without a ``Bearer`` prefix; None when it is not one."""
    if value is None:
        return None
    s = _credentials(value, "bearer ")
    parts = s.split(".")
    if len(parts) not in (3, 5):
        return None
    try:
        header = json.loads(_b64url(parts[0]))
        payload = json.loads(_b64url(parts[1])) if len(parts) == 3 else {}
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    return Jwt(s, header, payload)


@dataclass
class BasicAuthCredentials:
    UserId: str
    Password: str


def parse_basic(value: str | None) -> BasicAuthCredentials | None:
    """``AsBasic()``: ``Basic base64(user:password)`` (scheme optional); None when it is not one."""
    if value is None:
        return None
    s = _credentials(value, "basic ")
    try:
        text = base64.b64decode(s, validate=True).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return BasicAuthCredentials(user, password)


@dataclass(frozen=True)
class NetEncoding:
    """``Encoding.UTF8`` and friends."""

    name: str
    codec: str


ENCODINGS = {
    "UTF8": NetEncoding("utf-8", "utf-8"),
    "ASCII": NetEncoding("us-ascii", "ascii"),
    "Unicode": NetEncoding("utf-16", "utf-16-le"),
    "BigEndianUnicode": NetEncoding("utf-16BE", "utf-16-be"),
    "UTF32": NetEncoding("utf-32", "utf-32-le"),
    "Latin1": NetEncoding("iso-8859-1", "latin-1"),
    "Default": NetEncoding("utf-8", "utf-8"),
}


@dataclass
class RegexObj:
    pattern: Any  # a compiled ``regex`` pattern


@dataclass
class GroupObj:
    Success: bool
    Value: str
    Index: int
    Length: int
    Name: str = ""


@dataclass
class MatchObj:
    m: Any  # a ``regex`` match, or None

    @property
    def success(self) -> bool:
        return self.m is not None

    def group(self, key: int | str) -> GroupObj:
        m = self.m
        if m is None:
            return GroupObj(False, "", 0, 0, str(key))
        try:
            v = m.group(key)
        except IndexError:  # no such group
            return GroupObj(False, "", 0, 0, str(key))
        if v is None:
            return GroupObj(False, "", 0, 0, str(key))
        return GroupObj(True, v, m.start(key), len(v), str(key))


@dataclass
class NetUri:
    """``System.Uri`` (absolute URIs)."""

    text: str

    @property
    def parts(self) -> Any:
        return urlsplit(self.text)


@dataclass
class StringBuilderObj:
    parts: list[str] = field(default_factory=list)

    def text(self) -> str:
        s = "".join(self.parts)
        self.parts = [s]
        return s


class HashSetObj:
    """``HashSet<T>``: insertion-ordered, as .NET's is in practice."""

    def __init__(self, items: Iterable[Any] = (), ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        self.items: dict[Any, Any] = {}
        for x in items:
            self.add(x)

    def key(self, x: Any) -> Any:
        return x.lower() if self.ignore_case and isinstance(x, str) else hash_key(x)

    def add(self, x: Any) -> bool:
        k = self.key(x)
        if k in self.items:
            return False
        self.items[k] = x
        return True


class CIDict(dict[str, Any]):
    """A ``Dictionary<string, T>`` built with an ignore-case comparer: lookups fold case, keys keep spelling."""

    def _find(self, key: Any) -> Any:
        if isinstance(key, str):
            low = key.lower()
            for k in dict.keys(self):
                if isinstance(k, str) and k.lower() == low:
                    return k
        return key

    def __getitem__(self, key: Any) -> Any:
        return dict.__getitem__(self, self._find(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, self._find(key), value)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._find(key))

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, self._find(key))

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, self._find(key), default)

    def pop(self, key: Any, *default: Any) -> Any:  # type: ignore[override]
        return dict.pop(self, self._find(key), *default)


def hash_key(x: Any) -> Any:
    """A dictionary/set key with .NET equality (JValues by value, other objects by identity)."""
    if isinstance(x, JValue):
        return ("jv", x.value)
    if isinstance(x, list | dict | bytearray | set | JToken) or hasattr(x, "__dataclass_fields__"):
        return ("id", id(x))
    return x


# --- handles for names that denote types and namespaces -----------------------------------------------------


@dataclass(frozen=True)
class TypeHandle:
    """A type used as a value: the target of a static member access (``Convert.ToBase64String``)."""

    full: str
    args: tuple[TypeRef, ...] = ()


@dataclass(frozen=True)
class NamespaceHandle:
    path: str


# --- type names ---------------------------------------------------------------------------------------------

ALIASES = {
    "string": "System.String", "int": "System.Int32", "long": "System.Int64", "bool": "System.Boolean",
    "double": "System.Double", "float": "System.Single", "decimal": "System.Decimal", "char": "System.Char",
    "byte": "System.Byte", "sbyte": "System.SByte", "short": "System.Int16", "ushort": "System.UInt16",
    "uint": "System.UInt32", "ulong": "System.UInt64", "object": "System.Object", "void": "System.Void",
}  # fmt: skip

# Short name → full name for every type expressions may name.
_TYPES = [
    "System.String",
    "System.Int32",
    "System.Int64",
    "System.Int16",
    "System.UInt16",
    "System.UInt32",
    "System.UInt64",
    "System.Boolean",
    "System.Double",
    "System.Single",
    "System.Decimal",
    "System.Char",
    "System.Byte",
    "System.SByte",
    "System.Object",
    "System.Void",
    "System.Math",
    "System.Convert",
    "System.DateTime",
    "System.DateTimeOffset",
    "System.TimeSpan",
    "System.Guid",
    "System.Array",
    "System.BitConverter",
    "System.Uri",
    "System.Random",
    "System.Enum",
    "System.Exception",
    "System.Nullable",
    "System.Tuple",
    "System.UriPartial",
    "System.StringComparison",
    "System.StringComparer",
    "System.StringSplitOptions",
    "System.DateTimeKind",
    "System.MidpointRounding",
    "System.DayOfWeek",
    "System.ArgumentException",
    "System.ArgumentNullException",
    "System.FormatException",
    "System.InvalidOperationException",
    "System.NullReferenceException",
    "System.InvalidCastException",
    "System.OverflowException",
    "System.Collections.Generic.KeyNotFoundException",
    "System.Func",
    "System.Action",
    "System.Predicate",
    "System.Text.Encoding",
    "System.Text.StringBuilder",
    "System.Text.RegularExpressions.Regex",
    "System.Text.RegularExpressions.RegexOptions",
    "System.Text.RegularExpressions.Match",
    "System.Text.RegularExpressions.Group",
    "System.Net.WebUtility",
    "System.Net.IPAddress",
    "System.Web.HttpUtility",
    "System.Linq.Enumerable",
    "System.Collections.Generic.List",
    "System.Collections.Generic.Dictionary",
    "System.Collections.Generic.HashSet",
    "System.Collections.Generic.IEnumerable",
    "System.Collections.Generic.IList",
    "System.Collections.Generic.ICollection",
    "System.Collections.Generic.IDictionary",
    "System.Collections.Generic.IReadOnlyDictionary",
    "System.Collections.Generic.IReadOnlyList",
    "System.Collections.Generic.IReadOnlyCollection",
    "System.Collections.Generic.KeyValuePair",
    "System.Security.Cryptography.HMACSHA256",
    "System.Security.Cryptography.HMACSHA1",
    "System.Security.Cryptography.HMACSHA384",
    "System.Security.Cryptography.HMACSHA512",
    "System.Security.Cryptography.HMACMD5",
    "System.Security.Cryptography.SHA256",
    "System.Security.Cryptography.SHA1",
    "System.Security.Cryptography.SHA384",
    "System.Security.Cryptography.SHA512",
    "System.Security.Cryptography.MD5",
    "System.Security.Cryptography.RandomNumberGenerator",
    "Newtonsoft.Json.JsonConvert",
    "Newtonsoft.Json.Formatting",
    "Newtonsoft.Json.Linq.JToken",
    "Newtonsoft.Json.Linq.JObject",
    "Newtonsoft.Json.Linq.JArray",
    "Newtonsoft.Json.Linq.JValue",
    "Newtonsoft.Json.Linq.JProperty",
    "Newtonsoft.Json.Linq.JContainer",
    "Newtonsoft.Json.Linq.JTokenType",
    "Microsoft.Azure.ApiManagement.IResponse",
    "Microsoft.Azure.ApiManagement.IRequest",
    "Microsoft.Azure.ApiManagement.IMessageBody",
    "Microsoft.Azure.ApiManagement.IUrl",
    "Microsoft.Azure.ApiManagement.Jwt",
    "Microsoft.Azure.ApiManagement.Authorization",
    "Microsoft.Azure.ApiManagement.BasicAuthCredentials",
    "Microsoft.Azure.ApiManagement.IContext",
    "Microsoft.Azure.ApiManagement.ILastError",
]
FULL_NAMES: dict[str, str] = {}
for _full in _TYPES:
    FULL_NAMES[_full] = _full
    FULL_NAMES.setdefault(_full.rsplit(".", 1)[1], _full)
for _alias, _full in ALIASES.items():
    FULL_NAMES[_alias] = _full
NAMESPACES = frozenset(
    p for full in _TYPES for p in (".".join(full.split(".")[:i]) for i in range(1, full.count(".") + 1))
)


def resolve_type_name(name: str) -> str | None:
    """The full .NET name of a written type name (alias, short or qualified), or None when unknown."""
    return FULL_NAMES.get(name)


def net_type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "System.Boolean"
    if isinstance(v, Char):
        return "System.Char"
    if isinstance(v, str):
        return "System.String"
    if isinstance(v, Long):
        return "System.Int64"
    if isinstance(v, int):
        return "System.Int32"
    if isinstance(v, float):
        return "System.Double"
    if isinstance(v, Decimal):
        return "System.Decimal"
    if isinstance(v, bytes | bytearray):
        return "System.Byte[]"
    if isinstance(v, list):
        if v and all(isinstance(x, str) for x in v):
            return "System.String[]"
        return "System.Object[]"
    if isinstance(v, CIDict | dict):
        return "System.Collections.Generic.Dictionary`2[System.String,System.Object]"
    if isinstance(v, datetime):
        return "System.DateTime"
    if isinstance(v, DateTimeOffset):
        return "System.DateTimeOffset"
    if isinstance(v, timedelta):
        return "System.TimeSpan"
    if isinstance(v, UUID):
        return "System.Guid"
    if isinstance(v, JToken):
        return "Newtonsoft.Json.Linq." + v.type_name
    if isinstance(v, EnumValue):
        return v.enum
    if isinstance(v, ctx.Response):
        return "Microsoft.Azure.ApiManagement.IResponse"
    if isinstance(v, Jwt):
        return "Microsoft.Azure.ApiManagement.Jwt"
    if isinstance(v, ctx.Authorization):
        return "Microsoft.Azure.ApiManagement.Authorization"
    if isinstance(v, BasicAuthCredentials):
        return "Microsoft.Azure.ApiManagement.BasicAuthCredentials"
    if isinstance(v, AnonymousObject):
        return "<>f__AnonymousType0"
    if isinstance(v, NetUri):
        return "System.Uri"
    if isinstance(v, StringBuilderObj):
        return "System.Text.StringBuilder"
    if isinstance(v, KeyValuePair):
        return "System.Collections.Generic.KeyValuePair`2"
    return type(v).__name__


# --- ToString() ---------------------------------------------------------------------------------------------


def to_net_string(v: Any) -> str:
    """``v.ToString()`` with the invariant culture; null becomes "" (as in concatenation and interpolation)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return format_double(v)
    if isinstance(v, Decimal):
        return format(v, "f") if v == v.to_integral_value() or abs(v.adjusted()) < 28 else str(v)
    if isinstance(v, datetime):
        return format_datetime(v, None)
    if isinstance(v, DateTimeOffset):
        return format_datetime(v.dt, None, offset_kind=True)
    if isinstance(v, timedelta):
        return format_timespan(v)
    if isinstance(v, UUID):
        return format_guid(v)
    if isinstance(v, JToken):
        return str(v)
    if isinstance(v, EnumValue):
        return v.name
    if isinstance(v, ctx.Url):
        return str(v)
    if isinstance(v, NetUri):
        return v.text
    if isinstance(v, StringBuilderObj):
        return v.text()
    if isinstance(v, KeyValuePair):
        return f"[{to_net_string(v.Key)}, {to_net_string(v.Value)}]"
    if isinstance(v, AnonymousObject):
        inner = ", ".join(f"{k} = {to_net_string(x)}" for k, x in v.members.items())
        return "{ " + inner + " }" if inner else "{ }"
    if isinstance(v, NetTuple):
        return "(" + ", ".join(to_net_string(x) for x in v.items) + ")"
    if isinstance(v, GroupObj):
        return v.Value
    if isinstance(v, MatchObj):
        return v.m.group(0) if v.m else ""
    if isinstance(v, Jwt):
        return v.raw
    if isinstance(v, ctx.Body):
        return "Microsoft.Azure.ApiManagement.MessageBody"
    return net_type_name(v)


# --- equality and ordering ----------------------------------------------------------------------------------


def net_equals(a: Any, b: Any) -> bool:
    """C# ``==`` on the runtime values: value equality for primitives, strings and structs, else reference."""
    if type(a) is str and type(b) is str:  # the common case, answered as below
        return a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    na, nb = _numeric(a), _numeric(b)
    if na is not None and nb is not None:
        return na == nb
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, datetime | timedelta | UUID | EnumValue) or isinstance(b, datetime | timedelta | UUID):
        return type(a) is type(b) and a == b
    if isinstance(a, DateTimeOffset) and isinstance(b, DateTimeOffset):
        return a.dt == b.dt
    if isinstance(a, KeyValuePair) and isinstance(b, KeyValuePair):
        return net_equals(a.Key, b.Key) and net_equals(a.Value, b.Value)
    return a is b


def net_object_equals(a: Any, b: Any) -> bool:
    """``object.Equals``: like ``==`` but JValues and anonymous objects compare by value."""
    if isinstance(a, JValue) and isinstance(b, JValue):
        return a == b
    if isinstance(a, AnonymousObject) and isinstance(b, AnonymousObject):
        return a.members.keys() == b.members.keys() and all(
            net_object_equals(a.members[k], b.members[k]) for k in a.members
        )
    if isinstance(a, bytes | bytearray) and isinstance(b, bytes | bytearray):
        return a is b
    return net_equals(a, b)


def _numeric(v: Any) -> int | float | Decimal | None:
    if isinstance(v, Char):
        return ord(v)
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return v
    return None


def compare(a: Any, b: Any) -> int:
    """Ordering for ``<``/``OrderBy``/``Max``: numbers, strings (ordinal), dates, time spans, GUIDs, bools."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    na, nb = _numeric(a), _numeric(b)
    if na is not None and nb is not None:
        if isinstance(na, float) and math.isnan(na):
            return -1 if not (isinstance(nb, float) and math.isnan(nb)) else 0
        return (na > nb) - (na < nb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if isinstance(a, DateTimeOffset) and isinstance(b, DateTimeOffset):
        return (a.dt > b.dt) - (a.dt < b.dt)
    if type(a) is type(b) and isinstance(a, datetime | timedelta | UUID | bool):
        try:
            return (a > b) - (a < b)
        except TypeError:
            da, db = _naive(a), _naive(b)
            return (da > db) - (da < db)
    if isinstance(a, JValue) and isinstance(b, JValue):
        return compare(a.value, b.value)
    raise NetException(
        "System.ArgumentException",
        f"At least one object must implement IComparable ({net_type_name(a)}, {net_type_name(b)}).",
    )


def _naive(d: Any) -> Any:
    return d.replace(tzinfo=None) if isinstance(d, datetime) else d


# --- is / as / casts ----------------------------------------------------------------------------------------

_INT_RANGES = {
    "System.Int32": (-(2**31), 2**31 - 1), "System.Int64": (-(2**63), 2**63 - 1), "System.Int16": (-(2**15), 2**15 - 1),
    "System.UInt16": (0, 2**16 - 1), "System.UInt32": (0, 2**32 - 1), "System.UInt64": (0, 2**64 - 1),
    "System.Byte": (0, 255), "System.SByte": (-128, 127),
}  # fmt: skip

_CHECKS: dict[str, Callable[[Any], bool]] = {
    "System.Object": lambda v: True,
    "System.String": lambda v: isinstance(v, str) and not isinstance(v, Char),
    "System.Char": lambda v: isinstance(v, Char),
    "System.Boolean": lambda v: isinstance(v, bool),
    "System.Int32": lambda v: is_integer(v) and not isinstance(v, Long),
    "System.Int64": lambda v: isinstance(v, Long),
    "System.Double": lambda v: isinstance(v, float),
    "System.Single": lambda v: isinstance(v, float),
    "System.Decimal": lambda v: isinstance(v, Decimal),
    "System.DateTime": lambda v: isinstance(v, datetime),
    "System.DateTimeOffset": lambda v: isinstance(v, DateTimeOffset),
    "System.TimeSpan": lambda v: isinstance(v, timedelta),
    "System.Guid": lambda v: isinstance(v, UUID),
    "System.Uri": lambda v: isinstance(v, NetUri),
    "System.Text.StringBuilder": lambda v: isinstance(v, StringBuilderObj),
    "Newtonsoft.Json.Linq.JToken": lambda v: isinstance(v, JToken),
    "Newtonsoft.Json.Linq.JObject": lambda v: isinstance(v, JObject),
    "Newtonsoft.Json.Linq.JArray": lambda v: isinstance(v, JArray),
    "Newtonsoft.Json.Linq.JValue": lambda v: isinstance(v, JValue),
    "Newtonsoft.Json.Linq.JProperty": lambda v: isinstance(v, JProperty),
    "Newtonsoft.Json.Linq.JContainer": lambda v: isinstance(v, JContainer),
    "Microsoft.Azure.ApiManagement.IResponse": lambda v: isinstance(v, ctx.Response),
    "Microsoft.Azure.ApiManagement.IRequest": lambda v: isinstance(v, ctx.Request),
    "Microsoft.Azure.ApiManagement.IMessageBody": lambda v: isinstance(v, ctx.Body),
    "Microsoft.Azure.ApiManagement.IUrl": lambda v: isinstance(v, ctx.Url),
    "Microsoft.Azure.ApiManagement.Jwt": lambda v: isinstance(v, Jwt),
    "Microsoft.Azure.ApiManagement.BasicAuthCredentials": lambda v: isinstance(v, BasicAuthCredentials),
    "Microsoft.Azure.ApiManagement.IContext": lambda v: isinstance(v, ctx.Context),
    "Microsoft.Azure.ApiManagement.ILastError": lambda v: isinstance(v, ctx.LastError),
    "System.Collections.Generic.Dictionary": lambda v: isinstance(v, dict),
    "System.Collections.Generic.IDictionary": lambda v: isinstance(v, dict | JObject),
    "System.Collections.Generic.IReadOnlyDictionary": lambda v: isinstance(v, dict | ctx.MultiMap),
    "System.Collections.Generic.List": lambda v: isinstance(v, list),
    "System.Collections.Generic.IList": lambda v: isinstance(v, list | JArray),
    "System.Collections.Generic.IReadOnlyList": lambda v: isinstance(v, list),
    "System.Collections.Generic.HashSet": lambda v: isinstance(v, HashSetObj),
    "System.Collections.Generic.KeyValuePair": lambda v: isinstance(v, KeyValuePair),
    "System.Array": lambda v: isinstance(v, list | bytes | bytearray),
}


def _enumerable(v: Any) -> bool:
    return isinstance(v, list | tuple | str | dict | bytes | bytearray | HashSetObj | JContainer | ctx.MultiMap)


for _n in ("IEnumerable", "ICollection", "IReadOnlyCollection"):
    _CHECKS["System.Collections.Generic." + _n] = _enumerable
for _n in _INT_RANGES:
    _CHECKS.setdefault(_n, lambda v: False)


def full_name(t: TypeRef) -> str:
    full = resolve_type_name(t.name)
    if full is None:
        raise NetException("System.TypeLoadException", f"The type or namespace name '{t.name}' could not be found.")
    return full


def is_instance(v: Any, t: TypeRef) -> bool:
    """C# ``v is T`` (null is never an instance)."""
    if v is None:
        return False
    if t.array:
        if t.array == 1 and full_name(t) == "System.Byte":
            return isinstance(v, bytes | bytearray)
        if not isinstance(v, list):
            return False
        el = t.element()
        return all(x is None or is_instance(x, el) for x in v)
    full = full_name(t)
    check = _CHECKS.get(full)
    if check is None:
        return net_type_name(v) == full
    return check(v)


def _to_integer(v: Any, full: str, target: str) -> int:
    lo, hi = _INT_RANGES[full]
    if isinstance(v, JValue):
        v = jvalue_convert(v, full, target)
    if isinstance(v, Char):
        n: int = ord(v)
    elif isinstance(v, bool):
        raise invalid_cast(v, target)
    elif isinstance(v, int):
        n = int(v)
    elif isinstance(v, float | Decimal):
        n = lo if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else int(v)
        if isinstance(v, Decimal) and not lo <= n <= hi:
            raise NetException(
                "System.OverflowException",
                "Value was either too large or too small for an " + target.split(".")[-1] + ".",
            )
    else:
        raise invalid_cast(v, target)
    if not lo <= n <= hi:
        n = (n - lo) % (hi - lo + 1) + lo  # unchecked conversion wraps
    return Long(n) if full == "System.Int64" else n


def jvalue_convert(v: JValue, full: str, target: str) -> Any:
    """Newtonsoft's explicit conversions from a JValue: numbers from numeric strings, strings from anything."""
    x = v.value
    short = target.split(".")[-1]
    if x is None:
        if full == "System.String":
            return None
        raise NetException("System.ArgumentException", f"Can not convert Null to {short}.")
    if full == "System.String":
        return to_net_string(v)
    if full == "System.Boolean":
        if isinstance(x, bool):
            return x
        if isinstance(x, str) and x.strip().lower() in ("true", "false"):
            return x.strip().lower() == "true"
        if isinstance(x, int | float):
            return x != 0
        raise format_error_conv(x, short)
    if full in _INT_RANGES or full in ("System.Double", "System.Single", "System.Decimal"):
        if isinstance(x, bool):
            return int(x)
        if isinstance(x, int | float | Decimal):
            return x
        if isinstance(x, str):
            try:
                return int(x.strip()) if full in _INT_RANGES else float(x.strip())
            except ValueError:
                raise format_error_conv(x, short) from None
        raise NetException("System.ArgumentException", f"Can not convert {v.kind} to {short}.")
    if full == "System.DateTime" and isinstance(x, str):
        from .dotnet import parse_datetime

        return parse_datetime(x)
    if full == "System.Guid" and isinstance(x, str):
        try:
            return UUID(x)
        except ValueError:
            raise format_error_conv(x, short) from None
    return x


def format_error_conv(x: Any, short: str) -> NetException:
    return NetException("System.FormatException", f"Could not convert string to {short.lower()}: {x}.")


def cast(v: Any, t: TypeRef) -> Any:
    """C# ``(T)v``: numeric conversions, unboxing checks, and Newtonsoft's explicit JToken conversions."""
    target = str(t)
    if t.array:
        if v is None or is_instance(v, t):
            return v
        if isinstance(v, JArray) and t.array == 1:
            return [cast(x, t.element()) for x in v.items]
        raise invalid_cast(v, target)
    full = full_name(t)
    if full == "System.Object":
        return v
    if v is None:
        if full in _VALUE_TYPES and not t.nullable:
            raise null_reference()
        return None
    if isinstance(v, JToken) and not isinstance(v, JValue) and full in _PRIMITIVE_TARGETS:
        raise NetException(
            "System.ArgumentException", f"Can not convert {type_of_token(v)} to {target.split('.')[-1].capitalize()}."
        )
    if isinstance(v, EnumValue) and full in _INT_RANGES:
        v = v.value
    if full in _INT_RANGES:
        return _to_integer(v, full, target)
    if isinstance(v, JValue) and full in _PRIMITIVE_TARGETS:
        v = jvalue_convert(v, full, target)
        if v is None:
            return None
    if full == "System.String":
        if isinstance(v, str) and not isinstance(v, Char):
            return v
        raise invalid_cast(v, target)
    if full in ("System.Double", "System.Single"):
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, Char):
            return float(ord(v))
        raise invalid_cast(v, target)
    if full == "System.Decimal":
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
            try:
                return Decimal(str(v)) if isinstance(v, float) else Decimal(v)
            except InvalidOperation:
                raise NetException(
                    "System.OverflowException", "Value was either too large or too small for a Decimal."
                ) from None
        raise invalid_cast(v, target)
    if full == "System.Char":
        if isinstance(v, Char):
            return v
        if is_integer(v):
            return Char(chr(int(v) & 0xFFFF))
        raise invalid_cast(v, target)
    if full == "System.DateTimeOffset" and isinstance(v, datetime):
        return DateTimeOffset(v if v.tzinfo is not None else v.replace(tzinfo=UTC))
    if is_instance(v, t):
        return v
    raise invalid_cast(v, target)


_VALUE_TYPES = frozenset({
    "System.Boolean", "System.Char", "System.Double", "System.Single", "System.Decimal", "System.DateTime",
    "System.DateTimeOffset", "System.TimeSpan", "System.Guid", *_INT_RANGES,
})  # fmt: skip
_PRIMITIVE_TARGETS = _VALUE_TYPES | {"System.String"}


def as_cast(v: Any, t: TypeRef) -> Any:
    """C# ``v as T``."""
    return v if v is not None and is_instance(v, t) else None


def default_of(t: TypeRef | None) -> Any:
    if t is None or t.nullable or t.array:
        return None
    full = resolve_type_name(t.name)
    if full in _INT_RANGES:
        return Long(0) if full == "System.Int64" else 0
    return {
        "System.Boolean": False, "System.Double": 0.0, "System.Single": 0.0, "System.Decimal": Decimal(0),
        "System.Char": Char("\0"), "System.Guid": UUID(int=0), "System.TimeSpan": timedelta(0),
        "System.DateTime": datetime(1, 1, 1),
    }.get(full or "")  # fmt: skip


def check_type_for_get(v: Any, t: TypeRef, what: str) -> Any:
    """``Variables.GetValueOrDefault<T>``: the stored value if it is a ``T`` (APIM throws otherwise)."""
    if v is None:
        if default_of(t) is not None:
            raise NetException("System.NullReferenceException", "Object reference not set to an instance of an object.")
        return None
    if is_instance(v, t):
        return v
    raise NetException(
        "System.InvalidCastException",
        f"Unable to cast object of type '{net_type_name(v)}' to type '{t}' ({what}).",
    )


def unwrap_token_type(t: JToken) -> str:
    return type_of_token(t)


def ensure_not_null(v: Any) -> Any:
    if v is None:
        raise null_reference()
    return v
