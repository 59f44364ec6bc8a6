""".NET members: instance properties and methods, extension methods (string helpers, LINQ), statics, constructors.

Every member is a small function ``(self, args, type_args)``; tables map .NET names to them per Python type. Named
arguments arrive appended to ``args`` (the forms policies use, ``preserveContent: true``, are last anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import math
import random
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cmp_to_key, lru_cache
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urljoin, urlsplit

import regex

from .. import context as ctx
from .ast import TypeRef
from .dotnet import (
    MAX_STRING,
    Char,
    EnumValue,
    KeyValuePair,
    Long,
    NetException,
    NetTuple,
    check_len,
    format_datetime,
    format_error,
    format_guid,
    format_number,
    format_timespan,
    is_integer,
    null_reference,
    parse_datetime,
    wrap32,
)
from .jsonlinq import (
    JArray,
    JObject,
    JProperty,
    JToken,
    JValue,
    from_object,
    iter_tokens,
    parse_array,
    parse_json,
    parse_object,
    select_tokens,
    to_python,
    type_of_token,
)
from .runtime_types import (
    ENCODINGS,
    AnonymousObject,
    CIDict,
    ClaimsDict,
    DateTimeOffset,
    GroupObj,
    HashSetObj,
    Jwt,
    MatchObj,
    NetEncoding,
    NetUri,
    RegexObj,
    StringBuilderObj,
    cast,
    check_type_for_get,
    compare,
    default_of,
    hash_key,
    is_instance,
    jvalue_convert,
    net_object_equals,
    net_type_name,
    parse_basic,
    parse_jwt,
    resolve_type_name,
    to_net_string,
)

MAX_ITEMS = 1_000_000
Args = list[Any]
TArgs = tuple[TypeRef, ...]
Method = Callable[[Any, Args, TArgs], Any]
Prop = Callable[[Any], Any]


class MemberNotFound(Exception):
    """No such member: becomes a runtime error naming the member (APIM would reject it at save time)."""


class OutRef:
    """An ``out``/``ref`` argument: methods assign ``.value``; the interpreter stores it into the variable."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value


def arg_error(message: str, param: str = "") -> NetException:
    return NetException("System.ArgumentException", message + (f" (Parameter '{param}')" if param else ""))


def out_of_range(
    param: str, message: str = "Index was out of range. Must be non-negative and less than the size of the collection."
) -> NetException:
    return NetException("System.ArgumentOutOfRangeException", f"{message} (Parameter '{param}')")


def argc(args: Args, *allowed: int) -> int:
    if len(args) not in allowed:
        raise TypeError(f"takes {allowed} arguments")
    return len(args)


def req(v: Any, param: str = "value") -> Any:
    if v is None:
        raise NetException("System.ArgumentNullException", f"Value cannot be null. (Parameter '{param}')")
    return v


def s_(v: Any, param: str = "value") -> str:
    """A string argument (null rejected)."""
    if type(v) is str:  # what the checks below return for a plain string, without them
        return v
    req(v, param)
    if isinstance(v, JValue) and isinstance(v.value, str):
        return v.value
    if not isinstance(v, str):
        raise TypeError(f"string expected, got {net_type_name(v)}")
    return str(v)


def i_(v: Any) -> int:
    if isinstance(v, Char):
        return ord(v)
    if not is_integer(v):
        raise TypeError(f"integer expected, got {net_type_name(v)}")
    return int(v)


def f_(v: Any) -> float:
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, Char):
        return float(ord(v))
    raise TypeError(f"number expected, got {net_type_name(v)}")


def b_(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, list) and all(is_integer(x) for x in v):
        return bytes(x & 0xFF for x in v)
    raise TypeError(f"byte[] expected, got {net_type_name(v)}")


def call_fn(f: Any, *a: Any) -> Any:
    if not callable(f):
        raise TypeError("a lambda or method group was expected")
    return f(*a)


def ignore_case(cmp: Any) -> bool:
    """Does a StringComparison / StringComparer / bool ``ignoreCase`` argument fold case?"""
    if isinstance(cmp, bool):
        return cmp
    if isinstance(cmp, EnumValue):
        return cmp.name.endswith("IgnoreCase")
    if cmp is None:
        return False
    raise TypeError("StringComparison expected")


def _fold(s: str, ic: bool) -> str:
    return s.lower() if ic else s


def _check_count(n: int) -> None:
    if n > MAX_ITEMS:
        raise NetException("System.OutOfMemoryException", "Insufficient memory to continue the execution.")


def new_list(items: list[Any]) -> list[Any]:
    _check_count(len(items))
    return items


# --- enumeration --------------------------------------------------------------------------------------------


def is_enumerable(v: Any) -> bool:
    return isinstance(
        v, list | tuple | str | dict | bytes | bytearray | HashSetObj | JObject | JArray | ctx.MultiMap | JProperty
    ) or (isinstance(v, JToken) and not isinstance(v, JValue))


def items_of(v: Any) -> list[Any]:
    """The elements ``foreach``/LINQ see, as a list (sources are materialised; LINQ is not lazy here)."""
    if v is None:
        raise NetException("System.ArgumentNullException", "Value cannot be null. (Parameter 'source')")
    if isinstance(v, list | tuple):
        return list(v)
    if isinstance(v, str):
        return [Char(c) for c in v]
    if isinstance(v, bytes | bytearray):
        return list(v)
    if isinstance(v, dict):
        return [KeyValuePair(k, x) for k, x in v.items()]
    if isinstance(v, ctx.MultiMap):
        return [KeyValuePair(n, v.get_all(n)) for n in v.names()]
    if isinstance(v, HashSetObj):
        return list(v.items.values())
    if isinstance(v, JToken):
        return list(iter_tokens(v))
    if isinstance(v, MatchCollection):
        return list(v.matches)
    if isinstance(v, GroupCollection):
        return v.all()
    raise NetException("System.InvalidCastException", f"'{net_type_name(v)}' is not enumerable (no GetEnumerator).")


# --- LINQ ---------------------------------------------------------------------------------------------------


def _pred(args: Args, i: int = 0) -> Callable[[Any], Any] | None:
    return args[i] if len(args) > i else None


def _truthy(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("a lambda returning bool was expected")
    return v


def _first(xs: list[Any], args: Args, default: bool, last: bool = False) -> Any:
    p = _pred(args)
    if p is not None and not callable(p):  # FirstOrDefault(defaultValue)
        xs2, dflt = xs, p
        return (xs2[-1] if last else xs2[0]) if xs2 else dflt
    it = reversed(xs) if last else iter(xs)
    for x in it:
        if p is None or _truthy(call_fn(p, x)):
            return x
    if default:
        return args[1] if len(args) > 1 else None
    raise NetException(
        "System.InvalidOperationException",
        "Sequence contains no matching element" if p else "Sequence contains no elements",
    )


def _single(xs: list[Any], args: Args, default: bool) -> Any:
    p = _pred(args)
    found = [x for x in xs if p is None or _truthy(call_fn(p, x))]
    if len(found) == 1:
        return found[0]
    if not found and default:
        return None
    if not found:
        raise NetException(
            "System.InvalidOperationException",
            "Sequence contains no matching element" if p else "Sequence contains no elements",
        )
    raise NetException(
        "System.InvalidOperationException",
        "Sequence contains more than one matching element" if p else "Sequence contains more than one element",
    )


def _eq_with(comparer: Any) -> Callable[[Any, Any], bool]:
    if comparer is not None and ignore_case(comparer):
        return lambda a, b: (
            (a.lower() == b.lower()) if isinstance(a, str) and isinstance(b, str) else net_object_equals(a, b)
        )
    return net_object_equals


def _distinct(xs: list[Any], comparer: Any = None) -> list[Any]:
    ic = comparer is not None and ignore_case(comparer)
    seen: set[Any] = set()
    out = []
    for x in xs:
        k = x.lower() if ic and isinstance(x, str) else hash_key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _agg_numbers(xs: list[Any], args: Args) -> list[Any]:
    sel = _pred(args)
    vals = [call_fn(sel, x) for x in xs] if sel else xs
    return [v.value if isinstance(v, JValue) else v for v in vals]


def _sum(xs: list[Any], args: Args, _t: TArgs) -> Any:
    vals = [v for v in _agg_numbers(xs, args) if v is not None]
    if any(isinstance(v, float) for v in vals):
        return math.fsum(f_(v) for v in vals)
    if any(isinstance(v, Decimal) for v in vals):
        return sum((Decimal(v) for v in vals), Decimal(0))
    total = sum(i_(v) for v in vals)
    long_ = any(isinstance(v, Long) for v in vals)
    lim = 2**63 if long_ else 2**31
    if not -lim <= total < lim:
        raise NetException("System.OverflowException", "Arithmetic operation resulted in an overflow.")
    return Long(total) if long_ else total


def _minmax(xs: list[Any], args: Args, sign: int) -> Any:
    vals = [v for v in _agg_numbers(xs, args) if v is not None]
    if not vals:
        if xs and all(v is None for v in _agg_numbers(xs, args)):
            return None
        raise NetException("System.InvalidOperationException", "Sequence contains no elements")
    best = vals[0]
    for v in vals[1:]:
        if compare(v, best) * sign > 0:
            best = v
    return best


def _average(xs: list[Any], args: Args, _t: TArgs) -> Any:
    vals = [v for v in _agg_numbers(xs, args) if v is not None]
    if not vals:
        raise NetException("System.InvalidOperationException", "Sequence contains no elements")
    if any(isinstance(v, Decimal) for v in vals):
        return sum((Decimal(v) for v in vals), Decimal(0)) / len(vals)
    return math.fsum(f_(v) for v in vals) / len(vals)


class Ordered(list[Any]):
    """An ``IOrderedEnumerable``: remembers its sort keys so ``ThenBy`` can refine the order."""

    keys: list[tuple[Callable[[Any], Any], bool]]


def _order(xs: list[Any], keys: list[tuple[Callable[[Any], Any], bool]]) -> Ordered:
    decorated = [(x, [call_fn(k, x) for k, _ in keys]) for x in xs]

    def cmp(a: tuple[Any, list[Any]], b: tuple[Any, list[Any]]) -> int:
        for i, (_, desc) in enumerate(keys):
            c = compare(a[1][i], b[1][i])
            if c:
                return -c if desc else c
        return 0

    out = Ordered(x for x, _ in sorted(decorated, key=cmp_to_key(cmp)))
    out.keys = keys
    return out


def _order_by(desc: bool) -> Method:
    def f(xs: Any, args: Args, _t: TArgs) -> Any:
        return _order(items_of(xs), [(args[0], desc)])

    return f


def _then_by(desc: bool) -> Method:
    def f(xs: Any, args: Args, _t: TArgs) -> Any:
        keys = list(getattr(xs, "keys", []))
        return _order(items_of(xs), [*keys, (args[0], desc)])

    return f


@lru_cache(maxsize=1)
def _identity() -> Callable[[Any], Any]:
    return lambda x: x


class Grouping(list[Any]):
    """``IGrouping<TKey, T>``: a list with a ``Key``."""

    key: Any


def _group_by(xs: Any, args: Args, _t: TArgs) -> Any:
    groups: dict[Any, Grouping] = {}
    ksel = args[0]
    esel = args[1] if len(args) > 1 and callable(args[1]) else None
    for x in items_of(xs):
        k = call_fn(ksel, x)
        hk = hash_key(k)
        g = groups.get(hk)
        if g is None:
            g = groups[hk] = Grouping()
            g.key = k
        g.append(call_fn(esel, x) if esel else x)
    return list(groups.values())


def _to_dictionary(xs: Any, args: Args, _t: TArgs) -> Any:
    ksel = args[0]
    vsel = args[1] if len(args) > 1 and callable(args[1]) else None
    comparer = args[-1] if args and isinstance(args[-1], EnumValue) else None
    out: dict[Any, Any] = CIDict() if comparer is not None and ignore_case(comparer) else {}
    for x in items_of(xs):
        k = call_fn(ksel, x)
        if k is None:
            raise NetException("System.ArgumentNullException", "Value cannot be null. (Parameter 'key')")
        if k in out:
            raise arg_error(f"An item with the same key has already been added. Key: {to_net_string(k)}")
        out[k] = call_fn(vsel, x) if vsel else x
    return out


def _aggregate(xs: Any, args: Args, _t: TArgs) -> Any:
    items = items_of(xs)
    if len(args) == 1:
        if not items:
            raise NetException("System.InvalidOperationException", "Sequence contains no elements")
        acc = items[0]
        for x in items[1:]:
            acc = call_fn(args[0], acc, x)
        return acc
    acc = args[0]
    for x in items:
        acc = call_fn(args[1], acc, x)
    return call_fn(args[2], acc) if len(args) > 2 else acc


def _select(xs: Any, args: Args, _t: TArgs) -> Any:
    f = args[0]
    items = items_of(xs)
    if getattr(f, "arity", 1) == 2:
        return [call_fn(f, x, i) for i, x in enumerate(items)]
    return [call_fn(f, x) for x in items]


def _where(xs: Any, args: Args, _t: TArgs) -> Any:
    f = args[0]
    items = items_of(xs)
    if getattr(f, "arity", 1) == 2:
        return [x for i, x in enumerate(items) if _truthy(call_fn(f, x, i))]
    return [x for x in items if _truthy(call_fn(f, x))]


def _contains(xs: Any, args: Args, _t: TArgs) -> bool:
    eq = _eq_with(args[1] if len(args) > 1 else None)
    return any(eq(x, args[0]) for x in items_of(xs))


def _cast_seq(xs: Any, _a: Args, t: TArgs) -> Any:
    return [cast(x, t[0]) for x in items_of(xs)] if t else items_of(xs)


def _of_type(xs: Any, _a: Args, t: TArgs) -> Any:
    return [x for x in items_of(xs) if is_instance(x, t[0])] if t else items_of(xs)


def _skip_take(xs: Any, args: Args, kind: str) -> Any:
    items = items_of(xs)
    n = i_(args[0])
    if kind == "Skip":
        return items[max(n, 0) :]
    if kind == "Take":
        return items[: max(n, 0)]
    if kind == "SkipLast":
        return items[: max(len(items) - n, 0)]
    return items[max(len(items) - n, 0) :]


def _while(xs: Any, args: Args, take: bool) -> Any:
    items = items_of(xs)
    i = 0
    while i < len(items) and _truthy(call_fn(args[0], items[i])):
        i += 1
    return items[:i] if take else items[i:]


def _element_at(xs: Any, args: Args, default: bool) -> Any:
    items = items_of(xs)
    i = i_(args[0])
    if 0 <= i < len(items):
        return items[i]
    if default:
        return None
    raise out_of_range("index")


def _set_op(kind: str) -> Method:
    def f(xs: Any, args: Args, _t: TArgs) -> Any:
        a, b = items_of(xs), items_of(args[0])
        comparer = args[1] if len(args) > 1 else None
        eq = _eq_with(comparer)
        if kind == "Union":
            return _distinct(a + b, comparer)
        if kind == "Intersect":
            return _distinct([x for x in a if any(eq(x, y) for y in b)], comparer)
        return _distinct([x for x in a if not any(eq(x, y) for y in b)], comparer)

    return f


def _zip(xs: Any, args: Args, _t: TArgs) -> Any:
    a, b = items_of(xs), items_of(args[0])
    if len(args) > 1:
        return [call_fn(args[1], x, y) for x, y in zip(a, b, strict=False)]
    return [NetTuple((x, y)) for x, y in zip(a, b, strict=False)]


LINQ: dict[str, Method] = {
    "Where": _where,
    "Select": _select,
    "SelectMany": lambda xs, a, t: new_list([y for x in items_of(xs) for y in items_of(call_fn(a[0], x))]),
    "Any": lambda xs, a, t: any(_truthy(call_fn(a[0], x)) for x in items_of(xs)) if a else bool(items_of(xs)),
    "All": lambda xs, a, t: all(_truthy(call_fn(a[0], x)) for x in items_of(xs)),
    "First": lambda xs, a, t: _first(items_of(xs), a, False),
    "FirstOrDefault": lambda xs, a, t: _first(items_of(xs), a, True),
    "Last": lambda xs, a, t: _first(items_of(xs), a, False, last=True),
    "LastOrDefault": lambda xs, a, t: _first(items_of(xs), a, True, last=True),
    "Single": lambda xs, a, t: _single(items_of(xs), a, False),
    "SingleOrDefault": lambda xs, a, t: _single(items_of(xs), a, True),
    "Count": lambda xs, a, t: sum(1 for x in items_of(xs) if _truthy(call_fn(a[0], x))) if a else len(items_of(xs)),
    "LongCount": lambda xs, a, t: Long(LINQ["Count"](xs, a, t)),
    "Contains": _contains,
    "ToArray": lambda xs, a, t: items_of(xs),
    "ToList": lambda xs, a, t: items_of(xs),
    "ToHashSet": lambda xs, a, t: HashSetObj(items_of(xs), bool(a) and ignore_case(a[0])),
    "AsEnumerable": lambda xs, a, t: items_of(xs),
    "ToDictionary": _to_dictionary,
    "ToLookup": _group_by,
    "OrderBy": _order_by(False),
    "OrderByDescending": _order_by(True),
    "ThenBy": _then_by(False),
    "ThenByDescending": _then_by(True),
    "Reverse": lambda xs, a, t: list(reversed(items_of(xs))),
    "Sum": lambda xs, a, t: _sum(items_of(xs), a, t),
    "Max": lambda xs, a, t: _minmax(items_of(xs), a, 1),
    "Min": lambda xs, a, t: _minmax(items_of(xs), a, -1),
    "Average": lambda xs, a, t: _average(items_of(xs), a, t),
    "Concat": lambda xs, a, t: new_list(items_of(xs) + items_of(a[0])),
    "Append": lambda xs, a, t: new_list([*items_of(xs), a[0]]),
    "Prepend": lambda xs, a, t: new_list([a[0], *items_of(xs)]),
    "Distinct": lambda xs, a, t: _distinct(items_of(xs), a[0] if a else None),
    "Union": _set_op("Union"),
    "Intersect": _set_op("Intersect"),
    "Except": _set_op("Except"),
    "Skip": lambda xs, a, t: _skip_take(xs, a, "Skip"),
    "Take": lambda xs, a, t: _skip_take(xs, a, "Take"),
    "SkipLast": lambda xs, a, t: _skip_take(xs, a, "SkipLast"),
    "TakeLast": lambda xs, a, t: _skip_take(xs, a, "TakeLast"),
    "SkipWhile": lambda xs, a, t: _while(xs, a, False),
    "TakeWhile": lambda xs, a, t: _while(xs, a, True),
    "Aggregate": _aggregate,
    "GroupBy": _group_by,
    "Zip": _zip,
    "DefaultIfEmpty": lambda xs, a, t: items_of(xs) or [a[0] if a else None],
    "ElementAt": lambda xs, a, t: _element_at(xs, a, False),
    "ElementAtOrDefault": lambda xs, a, t: _element_at(xs, a, True),
    "SequenceEqual": lambda xs, a, t: (
        lambda x, y: len(x) == len(y) and all(net_object_equals(p, q) for p, q in zip(x, y, strict=True))
    )(items_of(xs), items_of(a[0])),
    "Cast": _cast_seq,
    "OfType": _of_type,
}


# --- strings ------------------------------------------------------------------------------------------------

_WS = (
    " \t\n\v\f\r\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029"
    "\u202f\u205f\u3000"
)


def _split_args(args: Args) -> tuple[list[str], int, int]:
    """(separators, count, options) from any ``Split`` overload."""
    seps: list[str] = []
    count = 2**31 - 1
    options = 0
    rest = list(args)
    while rest and isinstance(rest[-1], EnumValue):
        options |= rest.pop().value
    if len(rest) >= 2 and is_integer(rest[-1]) and not isinstance(rest[-1], Char):
        count = i_(rest.pop())
    for a in rest:
        if a is None:
            continue
        if isinstance(a, list):
            seps.extend(str(x) for x in a if x is not None)
        elif isinstance(a, str):
            seps.append(str(a))
        else:
            raise TypeError("Split separator")
    return (
        [s for s in seps if s != ""] if any(isinstance(a, str) and not isinstance(a, Char) for a in rest) else seps,
        count,
        options,
    )


def str_split(s: str, args: Args) -> list[str]:
    seps, count, options = _split_args(args)
    remove_empty, trim = bool(options & 1), bool(options & 2)
    if count < 0:
        raise out_of_range("count", "Count cannot be less than zero.")
    if count == 0:
        return []
    parts: list[str] = []
    i = start = 0
    while i < len(s) and len(parts) < count - 1:
        hit = next((len(sep) for sep in seps if s.startswith(sep, i)), 0) if seps else int(s[i] in _WS)
        if hit:
            parts.append(s[start:i])
            i += hit
            start = i
        else:
            i += 1
    parts.append(s[start:])
    if trim:
        parts = [p.strip(_WS) for p in parts]
    if remove_empty:
        parts = [p for p in parts if p]
    return new_list(parts)


def _trim_chars(args: Args) -> str:
    chars: list[str] = []
    for a in args:
        if isinstance(a, list):
            chars.extend(str(c) for c in a)
        elif isinstance(a, str):
            chars.append(str(a))
    return "".join(chars) if chars else _WS


def _index_of(s: str, args: Args, last: bool = False) -> int:
    value = args[0]
    rest = list(args[1:])
    ic = False
    if rest and isinstance(rest[-1], EnumValue):
        ic = ignore_case(rest.pop())
    if isinstance(value, list):  # IndexOfAny
        positions = [p for p in ((s.rfind if last else s.find)(str(c)) for c in value) if p >= 0]
        return (max(positions) if last else min(positions)) if positions else -1
    v = s_(value)
    hay, needle = _fold(s, ic), _fold(v, ic)
    if last:
        end = i_(rest[0]) + 1 if rest else len(s)
        if not 0 <= end <= len(s) + 1:
            raise out_of_range("startIndex")
        return hay.rfind(needle, 0, end)
    start = i_(rest[0]) if rest else 0
    if not 0 <= start <= len(s):
        raise out_of_range("startIndex")
    end = start + i_(rest[1]) if len(rest) > 1 else len(s)
    if end > len(s):
        raise out_of_range("count")
    return hay.find(needle, start, end)


def _substring(s: str, args: Args) -> str:
    start = i_(args[0])
    if not 0 <= start <= len(s):
        raise out_of_range(
            "startIndex",
            "startIndex cannot be larger than length of string."
            if start > 0
            else "StartIndex cannot be less than zero.",
        )
    if len(args) > 1:
        n = i_(args[1])
        if n < 0 or start + n > len(s):
            raise out_of_range("length", "Index and length must refer to a location within the string.")
        return s[start : start + n]
    return s[start:]


def _replace(s: str, args: Args) -> str:
    old, new = args[0], args[1]
    if isinstance(old, Char):
        return s.replace(old, str(new))
    old_s = s_(old, "oldValue")
    if old_s == "":
        raise arg_error("String cannot be of zero length.", "oldValue")
    if len(args) > 2 and ignore_case(args[-1]):
        return check_len(re.sub(re.escape(old_s), lambda _m: new or "", s, flags=re.I))
    new_s = "" if new is None else s_(new)
    if len(s) + s.count(old_s) * max(len(new_s) - len(old_s), 0) > MAX_STRING:
        check_len("x" * (MAX_STRING + 1))
    return s.replace(old_s, new_s)


def _pad(s: str, args: Args, left: bool) -> str:
    n = i_(args[0])
    if n < 0:
        raise out_of_range("totalWidth", "Non-negative number required.")
    if n > MAX_STRING:
        check_len("x" * (MAX_STRING + 1))
    c = str(args[1]) if len(args) > 1 else " "
    return s.rjust(n, c) if left else s.ljust(n, c)


def _compare_strings(a: str | None, b: str | None, ic: bool) -> int:
    if a is None or b is None:
        return (a is not None) - (b is not None)
    x, y = _fold(a, ic), _fold(b, ic)
    return (x > y) - (x < y)


def _str_equals(s: str, args: Args) -> bool:
    other = args[0]
    if not isinstance(other, str) or (isinstance(other, Char) and not isinstance(s, Char)):
        return False
    ic = ignore_case(args[1]) if len(args) > 1 else False
    return _fold(s, ic) == _fold(str(other), ic)


def _starts(s: str, args: Args, end: bool) -> bool:
    v = args[0]
    if type(v) is str and len(args) == 1:  # what the general path answers for a plain string, case-sensitive
        return s.endswith(v) if end else s.startswith(v)
    ic = ignore_case(args[1]) if len(args) > 1 else False
    if isinstance(v, Char):
        return bool(s) and (s[-1] if end else s[0]) == v
    v = s_(v)
    return _fold(s, ic).endswith(_fold(v, ic)) if end else _fold(s, ic).startswith(_fold(v, ic))


def _contains_str(s: str, args: Args) -> bool:
    ic = ignore_case(args[1]) if len(args) > 1 else False
    v = args[0]
    return _fold(str(s_(v)), ic) in _fold(s, ic)


def _remove(s: str, args: Args) -> str:
    start = i_(args[0])
    if not 0 <= start <= len(s):
        raise out_of_range("startIndex")
    if len(args) > 1:
        n = i_(args[1])
        if n < 0 or start + n > len(s):
            raise out_of_range("count")
        return s[:start] + s[start + n :]
    return s[:start]


def str_hash(s: str) -> int:
    """A deterministic 32-bit hash (.NET randomises string hashes per process, so any value is faithful)."""
    h = 5381
    for c in s:
        h = ((h << 5) + h + ord(c)) & 0xFFFFFFFF
    return wrap32(h)


STRING_METHODS: dict[str, Method] = {
    "Contains": lambda s, a, t: _contains_str(s, a),
    "StartsWith": lambda s, a, t: _starts(s, a, False),
    "EndsWith": lambda s, a, t: _starts(s, a, True),
    "Equals": lambda s, a, t: _str_equals(s, a),
    "IndexOf": lambda s, a, t: _index_of(s, a),
    "IndexOfAny": lambda s, a, t: _index_of(s, a),
    "LastIndexOf": lambda s, a, t: _index_of(s, a, last=True),
    "LastIndexOfAny": lambda s, a, t: _index_of(s, a, last=True),
    "Substring": lambda s, a, t: _substring(s, a),
    "Split": lambda s, a, t: str_split(s, a),
    "Trim": lambda s, a, t: s.strip(_trim_chars(a)),
    "TrimStart": lambda s, a, t: s.lstrip(_trim_chars(a)),
    "TrimEnd": lambda s, a, t: s.rstrip(_trim_chars(a)),
    "Replace": lambda s, a, t: _replace(s, a),
    "ToLower": lambda s, a, t: s.lower(),
    "ToUpper": lambda s, a, t: s.upper(),
    "ToLowerInvariant": lambda s, a, t: s.lower(),
    "ToUpperInvariant": lambda s, a, t: s.upper(),
    "PadLeft": lambda s, a, t: _pad(s, a, True),
    "PadRight": lambda s, a, t: _pad(s, a, False),
    "Insert": lambda s, a, t: (
        check_len(s[: i_(a[0])] + s_(a[1]) + s[i_(a[0]) :])
        if 0 <= i_(a[0]) <= len(s)
        else (_ for _ in ()).throw(out_of_range("startIndex"))
    ),
    "Remove": lambda s, a, t: _remove(s, a),
    "ToCharArray": lambda s, a, t: [Char(c) for c in s],
    "CompareTo": lambda s, a, t: _compare_strings(s, a[0], False),
    "Normalize": lambda s, a, t: unicodedata.normalize(a[0].name if a else "NFC", s),
    "Clone": lambda s, a, t: s,
    "GetHashCode": lambda s, a, t: str_hash(s),
    # APIM's string extension methods
    "AsJwt": lambda s, a, t: parse_jwt(s),
    "AsBasic": lambda s, a, t: parse_basic(s),
    "TryParseJwt": lambda s, a, t: _try_out(a[0], parse_jwt(s)),
    "TryParseBasic": lambda s, a, t: _try_out(a[0], parse_basic(s)),
}


def _try_out(ref: Any, value: Any) -> bool:
    if isinstance(ref, OutRef):
        ref.value = value
    return value is not None


def _char_method(name: str) -> Callable[[Args], Any]:
    fns: dict[str, Callable[[str], Any]] = {
        "IsDigit": lambda c: c.isdigit() and unicodedata.category(c) == "Nd",
        "IsLetter": str.isalpha,
        "IsLetterOrDigit": str.isalnum,
        "IsWhiteSpace": lambda c: c in _WS,
        "IsUpper": str.isupper,
        "IsLower": str.islower,
        "IsPunctuation": lambda c: unicodedata.category(c).startswith("P"),
        "IsControl": lambda c: unicodedata.category(c) == "Cc",
        "ToUpper": lambda c: Char(c.upper()[0]),
        "ToLower": lambda c: Char(c.lower()[0]),
        "ToUpperInvariant": lambda c: Char(c.upper()[0]),
        "ToLowerInvariant": lambda c: Char(c.lower()[0]),
    }
    fn = fns[name]

    def call(a: Args) -> Any:
        if len(a) == 2:
            return fn(s_(a[0])[i_(a[1])])
        return fn(str(a[0]))

    return call


# --- number parsing -----------------------------------------------------------------------------------------

_INT_RE = re.compile(r"\s*([+-]?)(\d+)\s*")
_FLOAT_RE = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def parse_int(s: Any, bits: int = 32) -> int:
    text = s_(s, "s")
    m = _INT_RE.fullmatch(text)
    if not m:
        raise format_error(f"The input string '{text}' was not in a correct format.")
    v = int(m.group(1) + m.group(2))
    lim = 2 ** (bits - 1)
    if not -lim <= v < lim:
        raise NetException("System.OverflowException", f"Value was either too large or too small for an Int{bits}.")
    return Long(v) if bits == 64 else v


def parse_float(s: Any) -> float:
    text = s_(s, "s")
    t = text.strip()
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf, "∞": math.inf, "-∞": -math.inf}
    if t in special:
        return special[t]
    if not _FLOAT_RE.fullmatch(t.replace(",", "")):
        raise format_error(f"The input string '{text}' was not in a correct format.")
    return float(t.replace(",", ""))


def parse_decimal(s: Any) -> Decimal:
    text = s_(s, "s")
    try:
        if not _FLOAT_RE.fullmatch(text.strip().replace(",", "")):
            raise InvalidOperation
        return Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise format_error(f"The input string '{text}' was not in a correct format.") from None


def parse_bool(s: Any) -> bool:
    text = s_(s, "value").strip().strip("\0")
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    raise format_error(f"String '{s}' was not recognized as a valid Boolean.")


def _try_parse(parser: Callable[[Any], Any], default: Any) -> Method:
    def f(_self: Any, a: Args, _t: TArgs) -> bool:
        ref = next((x for x in a if isinstance(x, OutRef)), None)
        try:
            if a[0] is None:
                raise format_error()
            v = parser(a[0])
        except NetException:
            if ref is not None:
                ref.value = default
            return False
        if ref is not None:
            ref.value = v
        return True

    return f


def _numeric_statics(
    bits: int | None, parser: Callable[[Any], Any], lo: Any, hi: Any, default: Any
) -> tuple[dict[str, Prop], dict[str, Method]]:
    props: dict[str, Prop] = {"MaxValue": lambda _: hi, "MinValue": lambda _: lo}
    methods: dict[str, Method] = {
        "Parse": lambda _s, a, t: parser(a[0]),
        "TryParse": _try_parse(parser, default),
    }
    return props, methods


# --- dates --------------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICKS_ZERO = datetime(1, 1, 1)


def ticks(dt: datetime) -> Long:
    naive = dt.replace(tzinfo=None)
    delta = naive - _TICKS_ZERO
    return Long((delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10)


def _add(dt: Any, delta: timedelta) -> Any:
    try:
        if isinstance(dt, DateTimeOffset):
            return DateTimeOffset(dt.dt + delta)
        return dt + delta
    except OverflowError:
        raise out_of_range("value", "The added or subtracted value results in an un-representable DateTime.") from None


def _add_months(dt: Any, months: int) -> Any:
    inner = dt.dt if isinstance(dt, DateTimeOffset) else dt
    y, m = divmod(inner.month - 1 + months, 12)
    year = inner.year + y
    if not 1 <= year <= 9999:
        raise out_of_range("months")
    import calendar

    day = min(inner.day, calendar.monthrange(year, m + 1)[1])
    res = inner.replace(year=year, month=m + 1, day=day)
    return DateTimeOffset(res) if isinstance(dt, DateTimeOffset) else res


def _num_delta(unit: str) -> Callable[[Any, Args, TArgs], Any]:
    def f(dt: Any, a: Args, _t: TArgs) -> Any:
        v = f_(a[0])
        if math.isnan(v) or abs(v) > 1e15:
            raise out_of_range("value")
        if unit == "ticks":
            return _add(dt, timedelta(microseconds=i_(a[0]) / 10))
        return _add(dt, timedelta(**{unit: v}))

    return f


def _dt_kind(dt: datetime) -> EnumValue:
    return (
        EnumValue("System.DateTimeKind", "Utc", 1)
        if dt.tzinfo is not None
        else EnumValue("System.DateTimeKind", "Unspecified", 0)
    )


_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _day_of_week(dt: datetime) -> EnumValue:
    name = _DAY_NAMES[dt.weekday()]
    return EnumValue("System.DayOfWeek", name, (dt.weekday() + 1) % 7)


DATE_PROPS: dict[str, Prop] = {
    "Year": lambda d: d.year, "Month": lambda d: d.month, "Day": lambda d: d.day, "Hour": lambda d: d.hour,
    "Minute": lambda d: d.minute, "Second": lambda d: d.second, "Millisecond": lambda d: d.microsecond // 1000,
    "Ticks": ticks, "Date": lambda d: d.replace(hour=0, minute=0, second=0, microsecond=0),
    "DayOfWeek": _day_of_week, "DayOfYear": lambda d: d.timetuple().tm_yday, "Kind": _dt_kind,
    "TimeOfDay": lambda d: timedelta(hours=d.hour, minutes=d.minute, seconds=d.second, microseconds=d.microsecond),
}  # fmt: skip


def _sub_dt(d: Any, a: Args, _t: TArgs) -> Any:
    other = a[0]
    if isinstance(other, timedelta):
        return _add(d, -other)
    if isinstance(d, DateTimeOffset) and isinstance(other, DateTimeOffset):
        return d.dt - other.dt
    if isinstance(other, datetime):
        return d.replace(tzinfo=None) - other.replace(tzinfo=None)
    raise TypeError("DateTime or TimeSpan expected")


DATE_ADDERS: dict[str, Method] = {
    "AddYears": lambda d, a, t: _add_months(d, 12 * i_(a[0])),
    "AddMonths": lambda d, a, t: _add_months(d, i_(a[0])),
    "AddDays": _num_delta("days"), "AddHours": _num_delta("hours"), "AddMinutes": _num_delta("minutes"),
    "AddSeconds": _num_delta("seconds"), "AddMilliseconds": _num_delta("milliseconds"),
    "AddTicks": _num_delta("ticks"),
    "Add": lambda d, a, t: _add(d, a[0]),
    "Subtract": _sub_dt,
}  # fmt: skip

DATE_METHODS: dict[str, Method] = {
    **DATE_ADDERS,
    "ToString": lambda d, a, t: format_datetime(d, a[0] if a else None),
    "ToUniversalTime": lambda d, a, t: d.astimezone(UTC) if d.tzinfo else d.replace(tzinfo=UTC),
    "ToLocalTime": lambda d, a, t: d.replace(tzinfo=None),
    "ToShortDateString": lambda d, a, t: format_datetime(d, "d"),
    "ToLongDateString": lambda d, a, t: format_datetime(d, "D"),
    "ToShortTimeString": lambda d, a, t: format_datetime(d, "t"),
    "ToLongTimeString": lambda d, a, t: format_datetime(d, "T"),
    "ToFileTimeUtc": lambda d, a, t: Long(ticks(d) - ticks(datetime(1601, 1, 1))),
    "ToBinary": lambda d, a, t: ticks(d),
    "CompareTo": lambda d, a, t: compare(d, a[0]),
}


def _dto_props() -> dict[str, Prop]:
    props: dict[str, Prop] = {k: (lambda fn: lambda o: fn(o.dt))(f) for k, f in DATE_PROPS.items() if k != "Kind"}
    props.update(
        {
            "UtcDateTime": lambda o: o.dt.astimezone(UTC),
            "DateTime": lambda o: o.dt.replace(tzinfo=None),
            "LocalDateTime": lambda o: o.dt.astimezone(UTC).replace(tzinfo=None),
            "Offset": lambda o: o.dt.utcoffset() or timedelta(0),
            "UtcTicks": lambda o: ticks(o.dt.astimezone(UTC)),
            "Date": lambda o: o.dt.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None),
        }
    )
    return props


def _unix(o: DateTimeOffset, scale: int) -> Long:
    delta = o.dt - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Long(us // (1_000_000 // scale))


DTO_METHODS: dict[str, Method] = {
    **DATE_ADDERS,
    "ToUnixTimeSeconds": lambda o, a, t: _unix(o, 1),
    "ToUnixTimeMilliseconds": lambda o, a, t: _unix(o, 1000),
    "ToString": lambda o, a, t: format_datetime(o.dt, a[0] if a else None, offset_kind=True),
    "ToUniversalTime": lambda o, a, t: DateTimeOffset(o.dt.astimezone(UTC)),
    "ToLocalTime": lambda o, a, t: DateTimeOffset(o.dt.astimezone(UTC)),
    "ToOffset": lambda o, a, t: DateTimeOffset(o.dt.astimezone(timezone(a[0]))),
    "CompareTo": lambda o, a, t: compare(o, a[0]),
}


def _dto_of(v: Any) -> DateTimeOffset:
    if isinstance(v, DateTimeOffset):
        return v
    if isinstance(v, datetime):
        return DateTimeOffset(v if v.tzinfo is not None else v.replace(tzinfo=UTC))
    raise TypeError("DateTime expected")


def _from_unix(scale: int) -> Method:
    def f(_s: Any, a: Args, _t: TArgs) -> DateTimeOffset:
        n = i_(a[0])
        try:
            return DateTimeOffset(_EPOCH + timedelta(microseconds=n * (1_000_000 // scale)))
        except OverflowError:
            raise out_of_range("seconds" if scale == 1 else "milliseconds") from None

    return f


def _new_datetime(a: Args) -> datetime:
    if len(a) == 1:
        return _TICKS_ZERO + timedelta(microseconds=i_(a[0]) // 10)
    kind = a[-1] if isinstance(a[-1], EnumValue) else None
    nums = [i_(x) for x in a if not isinstance(x, EnumValue)]
    y, mo, d, h, mi, s, ms = [*nums, 0, 0, 0, 0, 0, 0, 0][:7]
    try:
        dt = datetime(y, mo, d, h, mi, s, ms * 1000)
    except ValueError:
        raise out_of_range("year", "Year, Month, and Day parameters describe an un-representable DateTime.") from None
    return dt.replace(tzinfo=UTC) if kind is not None and kind.name == "Utc" else dt


def _parse_exact(a: Args) -> datetime:
    text, fmt = s_(a[0]), a[1]
    fmts = fmt if isinstance(fmt, list) else [fmt]
    for f in fmts:
        py = _dotnet_to_strptime(s_(f))
        try:
            dt = datetime.strptime(text, py)
        except ValueError:
            continue
        return dt
    raise format_error(f"String '{text}' was not recognized as a valid DateTime.")


def _dotnet_to_strptime(fmt: str) -> str:
    if len(fmt) == 1:
        from .dotnet import _STANDARD_DT

        fmt = _STANDARD_DT.get(fmt, fmt)
    table = [
        ("yyyy", "%Y"),
        ("MMMM", "%B"),
        ("MMM", "%b"),
        ("dddd", "%A"),
        ("ddd", "%a"),
        ("MM", "%m"),
        ("dd", "%d"),
        ("HH", "%H"),
        ("hh", "%I"),
        ("mm", "%M"),
        ("ss", "%S"),
        ("fffffff", "%f"),
        ("ffffff", "%f"),
        ("fff", "%f"),
        ("tt", "%p"),
        ("yy", "%y"),
        ("zzz", "%z"),
        ("K", "%z"),
    ]
    out, i = "", 0
    while i < len(fmt):
        if fmt[i] == "'":
            j = fmt.find("'", i + 1)
            j = len(fmt) if j < 0 else j
            out += fmt[i + 1 : j].replace("%", "%%")
            i = j + 1
            continue
        for k, v in table:
            if fmt.startswith(k, i):
                out += v
                i += len(k)
                break
        else:
            out += "%%" if fmt[i] == "%" else fmt[i]
            i += 1
    return out


TIMESPAN_PROPS: dict[str, Prop] = {
    "TotalDays": lambda t: t / timedelta(days=1), "TotalHours": lambda t: t / timedelta(hours=1),
    "TotalMinutes": lambda t: t / timedelta(minutes=1), "TotalSeconds": lambda t: t / timedelta(seconds=1),
    "TotalMilliseconds": lambda t: t / timedelta(milliseconds=1),
    "Days": lambda t: _ts_parts(t)[0], "Hours": lambda t: _ts_parts(t)[1], "Minutes": lambda t: _ts_parts(t)[2],
    "Seconds": lambda t: _ts_parts(t)[3], "Milliseconds": lambda t: _ts_parts(t)[4],
    "Ticks": lambda t: Long((t // timedelta(microseconds=1)) * 10),
}  # fmt: skip


def _ts_parts(t: timedelta) -> tuple[int, int, int, int, int]:
    us = t // timedelta(microseconds=1)
    sign = -1 if us < 0 else 1
    us = abs(us)
    d, r = divmod(us, 86_400_000_000)
    h, r = divmod(r, 3_600_000_000)
    m, r = divmod(r, 60_000_000)
    s, r = divmod(r, 1_000_000)
    return sign * d, sign * h, sign * m, sign * s, sign * (r // 1000)


TIMESPAN_METHODS: dict[str, Method] = {
    "Add": lambda t, a, _: t + a[0], "Subtract": lambda t, a, _: t - a[0], "Negate": lambda t, a, _: -t,
    "Duration": lambda t, a, _: abs(t), "ToString": lambda t, a, _: format_timespan(t, a[0] if a else None),
    "CompareTo": lambda t, a, _: compare(t, a[0]),
}  # fmt: skip


def _ts_from(unit: str) -> Method:
    def f(_s: Any, a: Args, _t: TArgs) -> timedelta:
        v = f_(a[0])
        if math.isnan(v) or abs(v) > 1e15:
            raise NetException("System.OverflowException", "TimeSpan overflowed because the duration is too long.")
        if unit == "ticks":
            return timedelta(microseconds=i_(a[0]) / 10)
        return timedelta(**{unit: v})

    return f


def _new_timespan(a: Args) -> timedelta:
    n = [i_(x) for x in a]
    if len(n) == 1:
        return timedelta(microseconds=n[0] / 10)
    if len(n) == 3:
        return timedelta(hours=n[0], minutes=n[1], seconds=n[2])
    if len(n) in (4, 5):
        return timedelta(days=n[0], hours=n[1], minutes=n[2], seconds=n[3], milliseconds=n[4] if len(n) == 5 else 0)
    raise TypeError("TimeSpan constructor")


def _parse_timespan(s: Any) -> timedelta:
    text = s_(s).strip()
    m = re.fullmatch(r"(-)?(?:(\d+)\.)?(\d+):(\d+)(?::(\d+)(?:\.(\d{1,7}))?)?", text)
    if not m:
        if text.lstrip("-").isdigit():
            return timedelta(days=int(text))
        raise format_error("String was not recognized as a valid TimeSpan.")
    d, h, mi, s2 = (int(m.group(i) or 0) for i in (2, 3, 4, 5))
    frac = int((m.group(6) or "0").ljust(7, "0")) / 10
    if h > 23 or mi > 59 or s2 > 59:
        raise NetException(
            "System.OverflowException",
            "The TimeSpan string could not be parsed because at least "
            "one of the numeric components is out of range or contains too many digits.",
        )
    td = timedelta(days=d, hours=h, minutes=mi, seconds=s2, microseconds=frac)
    return -td if m.group(1) else td


# --- Guid ---------------------------------------------------------------------------------------------------


def parse_guid(s: Any) -> uuid.UUID:
    text = s_(s, "input").strip()
    t = text.strip("{}()") if (text[:1], text[-1:]) in (("{", "}"), ("(", ")")) else text
    if re.fullmatch(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", t):
        return uuid.UUID(t)
    raise format_error("Unrecognized Guid format.")


def guid_hash(g: uuid.UUID) -> int:
    b = g.bytes_le
    parts = [int.from_bytes(b[i : i + 4], "little") for i in range(0, 16, 4)]
    return wrap32(parts[0] ^ parts[1] ^ parts[2] ^ parts[3])


GUID_METHODS: dict[str, Method] = {
    "ToString": lambda g, a, t: format_guid(g, a[0] if a else None),
    "ToByteArray": lambda g, a, t: g.bytes_le,
    "GetHashCode": lambda g, a, t: guid_hash(g),
    "CompareTo": lambda g, a, t: compare(g, a[0]),
}


# --- Convert / Encoding / Uri / WebUtility ------------------------------------------------------------------


def from_base64(s: Any) -> bytes:
    text = "".join(s_(s, "s").split())
    if len(text) % 4 or not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text):
        raise format_error(
            "The input is not a valid Base-64 string as it contains a non-base 64 character, more "
            "than two padding characters, or an illegal character among the padding characters."
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise format_error("The input is not a valid Base-64 string.") from None


def to_base64(a: Args) -> str:
    data = b_(req(a[0], "inArray"))
    if len(a) >= 3 and is_integer(a[1]):
        data = data[i_(a[1]) : i_(a[1]) + i_(a[2])]
    return base64.b64encode(data).decode("ascii")


def _convert_to_int(bits: int) -> Method:
    def f(_s: Any, a: Args, _t: TArgs) -> Any:
        v = a[0]
        if len(a) == 2:  # ToInt32(string, fromBase)
            n = int(s_(v), i_(a[1]))
            if n >= 2 ** (bits - 1):
                n -= 2**bits
            return Long(n) if bits == 64 else n
        if v is None:
            return Long(0) if bits == 64 else 0
        if isinstance(v, str) and not isinstance(v, Char):
            return parse_int(v, bits)
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, float | Decimal):
            d = Decimal(str(v)) if isinstance(v, float) else v
            n = int(d.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
            if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
                raise NetException(
                    "System.OverflowException", f"Value was either too large or too small for an Int{bits}."
                )
            return Long(n) if bits == 64 else n
        if isinstance(v, JValue):
            return f(_s, [jvalue_convert(v, "System.Int64", "long")], _t)
        return cast(v, TypeRef("long" if bits == 64 else "int"))

    return f


def _convert_to_double(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, str) and not isinstance(v, Char):
        return parse_float(v)
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    return f_(v)


def _convert_to_bool(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return parse_bool(v)
    return f_(v) != 0


def _convert_to_string(a: Args) -> str | None:
    v = a[0]
    if len(a) == 2 and is_integer(a[1]) and is_integer(v):
        base = i_(a[1])
        n = int(v)
        if n < 0:
            n += 2**64 if isinstance(v, Long) else 2**32
        return {2: format(n, "b"), 8: format(n, "o"), 10: str(int(v)), 16: format(n, "x")}[base]
    if len(a) == 2 and isinstance(a[1], str):
        return call_method(v, "ToString", [a[1]], ())
    return to_net_string(v) if v is not None else ""


def _encoding_get_string(e: NetEncoding, a: Args) -> str:
    data = b_(req(a[0], "bytes"))
    if len(a) >= 3:
        data = data[i_(a[1]) : i_(a[1]) + i_(a[2])]
    if e.codec == "ascii":
        return "".join(chr(b) if b < 128 else "?" for b in data)
    return data.decode(e.codec, errors="replace")


def _encoding_get_bytes(e: NetEncoding, a: Args) -> bytes:
    v = req(a[0], "s")
    s = "".join(str(c) for c in v) if isinstance(v, list) else s_(v, "s")
    if e.codec == "ascii":
        return bytes(ord(c) if ord(c) < 128 else 63 for c in s)
    return s.encode(e.codec, errors="surrogatepass" if e.codec.startswith("utf") else "replace")


_UNRESERVED = "-_.~"


def escape_data_string(s: Any) -> str:
    return quote(s_(s, "stringToEscape"), safe=_UNRESERVED)


def url_encode(s: Any) -> str | None:
    """``WebUtility.UrlEncode``: spaces as ``+``, upper-case hex, ``!*()`` unescaped."""
    if s is None:
        return None
    return quote(s_(s), safe="-_.!*()").replace("%20", "+")


def _html_encode(s: Any) -> str | None:
    if s is None:
        return None
    return html.escape(s_(s), quote=True).replace("&#x27;", "&#39;")


def _new_uri(a: Args) -> NetUri:
    if len(a) == 2:
        base = a[0].text if isinstance(a[0], NetUri) else s_(a[0])
        return NetUri(urljoin(base, s_(a[1])))
    text = s_(a[0], "uriString")
    parts = urlsplit(text)
    if not parts.scheme or (parts.scheme in ("http", "https") and not parts.netloc):
        raise NetException("System.UriFormatException", "Invalid URI: The format of the URI could not be determined.")
    return NetUri(text)


def _uri_port(u: NetUri) -> int:
    p = u.parts
    try:
        port = p.port
    except ValueError:
        port = None
    return port if port is not None else ctx.DEFAULT_PORTS.get(p.scheme, -1)


URI_PROPS: dict[str, Prop] = {
    "Host": lambda u: u.parts.hostname or "",
    "Scheme": lambda u: u.parts.scheme,
    "Port": _uri_port,
    "AbsolutePath": lambda u: u.parts.path or "/",
    "AbsoluteUri": lambda u: u.text,
    "OriginalString": lambda u: u.text,
    "Query": lambda u: ("?" + u.parts.query) if u.parts.query else "",
    "Fragment": lambda u: ("#" + u.parts.fragment) if u.parts.fragment else "",
    "PathAndQuery": lambda u: (u.parts.path or "/") + (("?" + u.parts.query) if u.parts.query else ""),
    "Authority": lambda u: u.parts.netloc.rpartition("@")[2],
    "IsAbsoluteUri": lambda u: True,
    "Segments": lambda u: (
        [seg + "/" for seg in (u.parts.path or "/").split("/")[:-1]][:1]
        + [s + "/" for s in (u.parts.path or "/").split("/")[1:-1]]
        + ([(u.parts.path or "/").split("/")[-1]] if (u.parts.path or "/").split("/")[-1] else [])
    ),
    "UserInfo": lambda u: u.parts.netloc.rpartition("@")[0],
}


# --- Regex --------------------------------------------------------------------------------------------------

_REGEX_OPTIONS = {
    "None": 0,
    "IgnoreCase": 1,
    "Multiline": 2,
    "ExplicitCapture": 4,
    "Compiled": 8,
    "Singleline": 16,
    "IgnorePatternWhitespace": 32,
    "RightToLeft": 64,
    "ECMAScript": 256,
    "CultureInvariant": 512,
}


#: Longest one regex operation may run. .NET's default is no limit, but here one catastrophic pattern meeting a
#: request's header would stall every request through the proxy; the ``regex`` module can stop it, ``re`` cannot.
REGEX_TIMEOUT = 1.0
REGEX_TIMED_OUT = (
    "The Regex engine has timed out while trying to match a pattern to an input string. This can occur for many "
    "reasons, including very large inputs or excessive backtracking caused by nested quantifiers, back-references "
    "and other factors."
)


@lru_cache(maxsize=256)
def compile_regex(pattern: str, options: int = 0) -> Any:
    """.NET regex → a ``regex`` pattern: named groups ``(?<n>…)``/``(?'n'…)`` and ``\\k<n>`` are translated."""
    p = re.sub(r"\(\?<([A-Za-z_]\w*)>", r"(?P<\1>", pattern)
    p = re.sub(r"\(\?'([A-Za-z_]\w*)'", r"(?P<\1>", p)
    p = re.sub(r"\\k<([A-Za-z_]\w*)>", r"(?P=\1)", p)
    flags = regex.VERSION0
    if options & 1:
        flags |= regex.IGNORECASE
    if options & 2:
        flags |= regex.MULTILINE
    if options & 16:
        flags |= regex.DOTALL
    if options & 32:
        flags |= regex.VERBOSE
    try:
        return regex.compile(p, flags)
    except (regex.error, OverflowError, RecursionError) as e:
        raise arg_error(f"Invalid pattern '{pattern}' at offset {getattr(e, 'pos', 0)}. {e}") from None


def _regex_of(a: Args, i: int) -> Any:
    """The compiled pattern for a static Regex call ``(input, pattern[, …][, options])``."""
    opts = a[-1].value if len(a) > i + 1 and isinstance(a[-1], EnumValue) else 0
    return compile_regex(s_(a[i], "pattern"), opts)


def _net_replacement(repl: str) -> Callable[[Any], str]:
    """A .NET replacement pattern (``$1``, ``${name}``, ``$$``, ``$0``, ``$&``) as a Python function."""
    tokens = re.findall(r"\$\$|\$\{\w+\}|\$\d+|\$&|\$.|[^$]+|\$", repl)

    def f(m: Any) -> str:
        out = []
        for t in tokens:
            if t == "$$":
                out.append("$")
            elif t == "$&" or t == "$0":
                out.append(m.group(0))
            elif t.startswith("${"):
                name = t[2:-1]
                try:
                    out.append(m.group(int(name) if name.isdigit() else name) or "")
                except (IndexError, regex.error):
                    out.append(t)
            elif re.fullmatch(r"\$\d+", t):
                try:
                    out.append(m.group(int(t[1:])) or "")
                except IndexError:
                    out.append(t)
            else:
                out.append(t)
        return "".join(out)

    return f


def regex_replace(rx: Any, s: str, repl: Any) -> str:
    fn = (lambda m: to_net_string(call_fn(repl, MatchObj(m)))) if callable(repl) else _net_replacement(
        s_(repl, "replacement")
    )
    return check_len(_bounded(rx.sub, fn, s))


def _bounded(op: Callable[..., Any], *args: Any) -> Any:
    """One regex operation under ``REGEX_TIMEOUT``, timing out as .NET's RegexMatchTimeoutException."""
    try:
        return op(*args, timeout=REGEX_TIMEOUT)
    except TimeoutError:
        raise NetException("System.Text.RegularExpressions.RegexMatchTimeoutException", REGEX_TIMED_OUT) from None


class MatchCollection:
    def __init__(self, matches: list[MatchObj]) -> None:
        self.matches = matches


class GroupCollection:
    def __init__(self, m: MatchObj) -> None:
        self.m = m

    def get(self, key: Any) -> GroupObj:
        if isinstance(key, JValue):
            key = key.value
        if isinstance(key, str):
            return self.m.group(int(key) if key.isdigit() else key)
        return self.m.group(i_(key))

    def all(self) -> list[GroupObj]:
        n = self.m.m.re.groups if self.m.m else 0
        return [self.m.group(i) for i in range(n + 1)]


def _match_value(m: MatchObj) -> str:
    return m.m.group(0) if m.m else ""


MATCH_PROPS: dict[str, Prop] = {
    "Success": lambda m: m.success, "Value": _match_value, "Index": lambda m: m.m.start() if m.m else 0,
    "Length": lambda m: len(_match_value(m)), "Groups": GroupCollection, "Name": lambda m: "0",
}  # fmt: skip


def _next_match(m: MatchObj) -> MatchObj:
    if m.m is None:
        return m
    pos = m.m.end() + (1 if m.m.end() == m.m.start() else 0)
    return MatchObj(_bounded(m.m.re.search, m.m.string, pos))


def _regex_static(name: str) -> Method:
    def f(_s: Any, a: Args, _t: TArgs) -> Any:
        if name == "Escape":
            return re.sub(r"([\\*+?|{\[()^$.#\s])", r"\\\1", s_(a[0]))
        if name == "Unescape":
            return re.sub(r"\\(.)", r"\1", s_(a[0]))
        s = s_(a[0], "input")
        return _regex_op(name, _regex_of(a, 1), s, a[2:])

    return f


def _regex_op(name: str, rx: Any, s: str, rest: Args) -> Any:
    if name == "IsMatch":
        return _bounded(rx.search, s) is not None
    if name == "Match":
        return MatchObj(_bounded(rx.search, s, i_(rest[0]) if rest and is_integer(rest[0]) else 0))
    if name == "Matches":
        matches = _bounded(lambda text, timeout: list(rx.finditer(text, timeout=timeout)), s)
        return MatchCollection([MatchObj(m) for m in matches])
    if name == "Replace":
        return regex_replace(rx, s, rest[0])
    if name == "Split":
        parts = _bounded(rx.split, s)
        return [p if p is not None else "" for p in parts]
    raise MemberNotFound(name)


# --- Newtonsoft ---------------------------------------------------------------------------------------------


def _token_value(tok: Any, t: TArgs) -> Any:
    if tok is None:
        return None
    if not t:
        return tok.value if isinstance(tok, JValue) else tok
    return cast(tok, t[0])


def _jtoken_item(tok: JToken, key: Any) -> Any:
    if isinstance(key, JValue):
        key = key.value
    return tok.get_item(key)


def serialize(v: Any, indent: bool = False) -> str:
    if isinstance(v, str) and not isinstance(v, Char):
        from .jsonlinq import quote_json

        return quote_json(v)
    return from_object(v).to_json(indent)


def _formatting(a: Args, i: int) -> bool:
    return len(a) > i and isinstance(a[i], EnumValue) and a[i].name == "Indented"


def deserialize(a: Args, t: TArgs) -> Any:
    text = s_(a[0])
    tok = parse_json(text)
    if not t:
        return tok if not isinstance(tok, JValue) else tok.value
    full = resolve_type_name(t[0].name)
    if full in (
        "Newtonsoft.Json.Linq.JObject",
        "Newtonsoft.Json.Linq.JToken",
        "Newtonsoft.Json.Linq.JArray",
        "System.Object",
    ):
        return cast(tok if not isinstance(tok, JValue) or full != "System.Object" else tok.value, t[0])
    if full in ("System.Collections.Generic.Dictionary", "System.Collections.Generic.IDictionary"):
        if not isinstance(tok, JObject):
            raise NetException(
                "Newtonsoft.Json.JsonSerializationException",
                "Cannot deserialize the current JSON value into a dictionary.",
            )
        return {k: _json_to_net(p.value) for k, p in tok.props.items()}
    if (
        full
        in (
            "System.Collections.Generic.List",
            "System.Collections.Generic.IList",
            "System.Collections.Generic.IEnumerable",
        )
        or t[0].array
    ):
        if not isinstance(tok, JArray):
            raise NetException(
                "Newtonsoft.Json.JsonSerializationException", "Cannot deserialize the current JSON value into a list."
            )
        return [_json_to_net(x) for x in tok.items]
    if isinstance(tok, JValue):
        return cast(tok, t[0])
    raise NetException(
        "Newtonsoft.Json.JsonSerializationException", f"Cannot deserialize the current JSON object into type '{t[0]}'."
    )


def _json_to_net(tok: JToken) -> Any:
    if isinstance(tok, JValue):
        return tok.value
    return tok


JTOKEN_PROPS: dict[str, Prop] = {
    "Type": lambda t: EnumValue("Newtonsoft.Json.Linq.JTokenType", type_of_token(t), 0),
    "Parent": lambda t: t.parent,
    "Path": lambda t: t.path,
    "HasValues": lambda t: bool(t.children()) if not isinstance(t, JValue) else False,
    "First": lambda t: (t.children() or [None])[0],
    "Last": lambda t: (t.children() or [None])[-1],
    "Root": lambda t: _root(t),
    "Next": lambda t: _sibling(t, 1),
    "Previous": lambda t: _sibling(t, -1),
}


def _jtoken_to_string(t: JToken, a: Args) -> str:
    """``ToString()`` is indented JSON (raw text for a JValue); ``ToString(Formatting.None)`` is compact JSON."""
    if not a:
        return str(t)
    return t.to_json(not (isinstance(a[0], EnumValue) and a[0].name == "None"))


def _root(t: JToken) -> JToken:
    while t.parent is not None:
        t = t.parent
    return t


def _sibling(t: JToken, d: int) -> JToken | None:
    p = t.parent
    if p is None or isinstance(p, JProperty):
        return None
    kids = p.children()
    i = next(i for i, k in enumerate(kids) if k is t)
    j = i + d
    return kids[j] if 0 <= j < len(kids) else None


def _select_token(t: JToken, a: Args) -> Any:
    found = select_tokens(t, s_(a[0], "path"))
    if len(found) > 1:
        raise NetException("Newtonsoft.Json.JsonException", "Path returned multiple tokens.")
    if not found and len(a) > 1 and a[1] is True:
        raise NetException("Newtonsoft.Json.JsonException", f"Property '{a[0]}' does not exist on JObject.")
    return found[0] if found else None


def _to_object(t: JToken, ta: TArgs) -> Any:
    if not ta:
        return to_python(t)
    full = resolve_type_name(ta[0].name)
    if full in ("System.Collections.Generic.Dictionary", "System.Collections.Generic.IDictionary"):
        return to_python(t) if isinstance(t, JObject) else cast(t, ta[0])
    if full in ("System.Collections.Generic.List", "System.Collections.Generic.IList") or ta[0].array:
        return [
            (
                _token_value(x, (ta[0].element() if ta[0].array else ta[0].args[0],))
                if (ta[0].array or ta[0].args)
                else to_python(x)
            )
            for x in iter_tokens(t)
        ]
    return cast(t, ta[0])


def _values(t: JToken, ta: TArgs) -> list[Any]:
    out = []
    for c in iter_tokens(t):
        v = c.value if isinstance(c, JProperty) else c
        out.append(_token_value(v, ta) if ta else v)
    return out


JTOKEN_METHODS: dict[str, Method] = {
    "ToString": lambda t, a, _: _jtoken_to_string(t, a),
    "Value": lambda t, a, ta: _token_value(_jtoken_item(t, a[0]) if a else t, ta),
    "Values": lambda t, a, ta: _values(t, ta),
    "SelectToken": lambda t, a, _: _select_token(t, a),
    "SelectTokens": lambda t, a, _: select_tokens(t, s_(a[0], "path")),
    "Children": lambda t, a, _: t.children(),
    "DeepClone": lambda t, a, _: t.deep_clone(),
    "Remove": lambda t, a, _: t.remove() if not a else JOBJECT_METHODS["Remove"](t, a, _),
    "ToObject": lambda t, a, ta: _to_object(t, ta),
    "Replace": lambda t, a, _: _replace_token(t, a[0]),
    "AddAfterSelf": lambda t, a, _: _insert_self(t, a[0], 1),
    "AddBeforeSelf": lambda t, a, _: _insert_self(t, a[0], 0),
}


def _replace_token(t: JToken, new: Any) -> None:
    p = t.parent
    if isinstance(p, JProperty):
        p.value = new
    elif isinstance(p, JArray):
        i = next(i for i, k in enumerate(p.items) if k is t)
        p.set_item(i, new)
    elif isinstance(p, JObject) and isinstance(t, JProperty):
        t.value = new.value if isinstance(new, JProperty) else new
    else:
        raise NetException("System.InvalidOperationException", "The parent is missing.")


def _insert_self(t: JToken, new: Any, after: int) -> None:
    p = t.parent
    if not isinstance(p, JArray):
        raise NetException("System.InvalidOperationException", "The parent is missing.")
    i = next(i for i, k in enumerate(p.items) if k is t)
    tok = from_object(new)
    tok = tok.deep_clone() if tok.parent is not None else tok
    tok.parent = p
    p.items.insert(i + after, tok)


def _jobject_add(o: JObject, a: Args) -> None:
    if len(a) == 1:
        o.add_content(a[0])
    else:
        o.add(s_(a[0], "propertyName"), a[1])


def _jobject_try_get(o: JObject, a: Args) -> bool:
    v = o.get_item(s_(a[0]))
    if isinstance(a[-1], OutRef):
        a[-1].value = v
    return v is not None


JOBJECT_METHODS: dict[str, Method] = {
    "Property": lambda o, a, _: o.props.get(s_(a[0], "name")),
    "Properties": lambda o, a, _: list(o.props.values()),
    "Add": lambda o, a, _: _jobject_add(o, a),
    "Remove": lambda o, a, _: o.remove(s_(a[0], "propertyName")) if a else JToken.remove(o),
    "ContainsKey": lambda o, a, _: s_(a[0]) in o.props,
    "TryGetValue": lambda o, a, _: _jobject_try_get(o, a),
    "GetValue": lambda o, a, _: o.get_item(s_(a[0])) if len(a) == 1 else _get_value_ci(o, a),
    "Merge": lambda o, a, _: _merge(o, a[0]),
}

JARRAY_METHODS: dict[str, Method] = {
    "Add": lambda arr, a, _: arr.add(a[0]),
    "Remove": lambda arr, a, _: _jarray_remove(arr, a[0]),
    "RemoveAt": lambda arr, a, _: (arr.get_item(i_(a[0])), arr.items.pop(i_(a[0])))[0].__setattr__("parent", None),
    "Insert": lambda arr, a, _: _jarray_insert(arr, i_(a[0]), a[1]),
    "Clear": lambda arr, a, _: arr.items.clear(),
    "IndexOf": lambda arr, a, _: next((i for i, x in enumerate(arr.items) if x is a[0]), -1),
}


def _jarray_remove(arr: JArray, tok: Any) -> bool:
    for i, x in enumerate(arr.items):
        if x is tok:
            arr.items.pop(i)
            x.parent = None
            return True
    return False


def _jarray_insert(arr: JArray, i: int, v: Any) -> None:
    if not 0 <= i <= len(arr.items):
        raise out_of_range("index")
    tok = from_object(v)
    tok = tok.deep_clone() if tok.parent is not None else tok
    tok.parent = arr
    arr.items.insert(i, tok)


def _get_value_ci(o: JObject, a: Args) -> Any:
    name = s_(a[0])
    if name in o.props:
        return o.props[name].value
    if ignore_case(a[1]):
        for k, p in o.props.items():
            if k.lower() == name.lower():
                return p.value
    return None


def _merge(o: JObject, other: Any) -> None:
    src = from_object(other)
    if not isinstance(src, JObject):
        return
    for k, p in src.props.items():
        cur = o.props.get(k)
        if cur is not None and isinstance(cur.value, JObject) and isinstance(p.value, JObject):
            _merge(cur.value, p.value)
        elif cur is not None and isinstance(cur.value, JArray) and isinstance(p.value, JArray):
            for x in p.value.items:
                cur.value.add(x.deep_clone())
        else:
            o.set_item(k, p.value.deep_clone())


# --- collections --------------------------------------------------------------------------------------------


def _dict_get_or_default(d: Any, a: Args, t: TArgs) -> Any:
    key = req(a[0], "key")
    if key in d:
        v = d[key]
        if isinstance(d, ClaimsDict) and isinstance(v, list):
            # a string[] default picks the generic overload (the string[] itself); a string one joins with commas
            return list(v) if len(a) > 1 and isinstance(a[1], list) else ",".join(v)
        return check_type_for_get(v, t[0], f"variable '{key}'") if t else v
    if len(a) > 1:
        return a[1]
    return default_of(t[0]) if t else None


def _dict_try_get(d: Any, a: Args) -> bool:
    key = req(a[0], "key")
    found = key in d
    if isinstance(a[-1], OutRef):
        a[-1].value = d[key] if found else None
    return found


def _dict_add(d: dict[Any, Any], a: Args) -> None:
    key = req(a[0], "key")
    if key in d:
        raise arg_error(f"An item with the same key has already been added. Key: {to_net_string(key)}")
    d[key] = a[1]
    _check_count(len(d))


DICT_PROPS: dict[str, Prop] = {
    "Count": len, "Keys": lambda d: list(d.keys()), "Values": lambda d: list(d.values()),
}  # fmt: skip

DICT_METHODS: dict[str, Method] = {
    "ContainsKey": lambda d, a, t: req(a[0], "key") in d,
    "ContainsValue": lambda d, a, t: any(net_object_equals(v, a[0]) for v in d.values()),
    "TryGetValue": lambda d, a, t: _dict_try_get(d, a),
    "GetValueOrDefault": _dict_get_or_default,
    "Add": lambda d, a, t: _dict_add(d, a),
    "TryAdd": lambda d, a, t: False if a[0] in d else (_dict_add(d, a) or True),
    "Remove": lambda d, a, t: d.pop(a[0], _MISSING) is not _MISSING,
    "Clear": lambda d, a, t: d.clear(),
}

_MISSING = object()


def _multimap_get_or_default(m: ctx.MultiMap, a: Args, t: TArgs) -> Any:
    return m.get(s_(a[0], "name"), a[1] if len(a) > 1 else None)


def _multimap_try_get(m: ctx.MultiMap, a: Args) -> bool:
    name = s_(a[0], "key")
    found = name in m
    if isinstance(a[-1], OutRef):
        a[-1].value = m.get_all(name) if found else None
    return found


MULTIMAP_PROPS: dict[str, Prop] = {
    "Count": len, "Keys": lambda m: m.names(), "Values": lambda m: [m.get_all(n) for n in m.names()],
}  # fmt: skip

MULTIMAP_METHODS: dict[str, Method] = {
    "GetValueOrDefault": _multimap_get_or_default,
    "ContainsKey": lambda m, a, t: s_(a[0], "key") in m,
    "TryGetValue": lambda m, a, t: _multimap_try_get(m, a),
}


def _list_remove(xs: list[Any], v: Any) -> bool:
    for i, x in enumerate(xs):
        if net_object_equals(x, v):
            del xs[i]
            return True
    return False


def _list_index(xs: list[Any], i: Any, extra: int = 0) -> int:
    n = i_(i)
    if not 0 <= n < len(xs) + extra:
        raise out_of_range("index")
    return n


LIST_PROPS: dict[str, Prop] = {"Count": len, "Length": len, "LongLength": lambda xs: Long(len(xs))}

LIST_METHODS: dict[str, Method] = {
    "Add": lambda xs, a, t: (xs.append(a[0]), new_list(xs))[0],
    "AddRange": lambda xs, a, t: (xs.extend(items_of(a[0])), new_list(xs))[0],
    "Remove": lambda xs, a, t: _list_remove(xs, a[0]),
    "RemoveAt": lambda xs, a, t: xs.pop(_list_index(xs, a[0])) and None,
    "RemoveAll": lambda xs, a, t: _remove_all(xs, a[0]),
    "Insert": lambda xs, a, t: xs.insert(_list_index(xs, a[0], 1), a[1]),
    "Clear": lambda xs, a, t: xs.clear(),
    "IndexOf": lambda xs, a, t: next((i for i, x in enumerate(xs) if net_object_equals(x, a[0])), -1),
    "Exists": lambda xs, a, t: any(_truthy(call_fn(a[0], x)) for x in xs),
    "Find": lambda xs, a, t: next((x for x in xs if _truthy(call_fn(a[0], x))), None),
    "FindAll": lambda xs, a, t: [x for x in xs if _truthy(call_fn(a[0], x))],
    "FindIndex": lambda xs, a, t: next((i for i, x in enumerate(xs) if _truthy(call_fn(a[0], x))), -1),
    "TrueForAll": lambda xs, a, t: all(_truthy(call_fn(a[0], x)) for x in xs),
    "ForEach": lambda xs, a, t: [call_fn(a[0], x) for x in list(xs)] and None,
    "Sort": lambda xs, a, t: (
        xs.sort(key=cmp_to_key(compare)) if not a else xs.sort(key=cmp_to_key(lambda p, q: i_(call_fn(a[0], p, q))))
    ),
    "GetRange": lambda xs, a, t: xs[i_(a[0]) : i_(a[0]) + i_(a[1])],
    "CopyTo": lambda xs, a, t: a[0].__setitem__(slice(i_(a[1]) if len(a) > 1 else 0, None), xs),
    "Clone": lambda xs, a, t: list(xs),
}
# List<T>.Reverse() reverses in place; LINQ's Reverse() returns a new sequence. Arrays/lists here use LINQ's.


def _remove_all(xs: list[Any], pred: Any) -> int:
    keep = [x for x in xs if not _truthy(call_fn(pred, x))]
    n = len(xs) - len(keep)
    xs[:] = keep
    return n


HASHSET_METHODS: dict[str, Method] = {
    "Add": lambda h, a, t: h.add(a[0]),
    "Contains": lambda h, a, t: h.key(a[0]) in h.items,
    "Remove": lambda h, a, t: h.items.pop(h.key(a[0]), _MISSING) is not _MISSING,
    "Clear": lambda h, a, t: h.items.clear(),
    "UnionWith": lambda h, a, t: [h.add(x) for x in items_of(a[0])] and None,
}


# --- body ---------------------------------------------------------------------------------------------------


def body_as(body: ctx.Body, a: Args, t: TArgs) -> Any:
    preserve = bool(a[0]) if a else False
    if not t:
        raise TypeError("As<T>() needs a type argument")
    full = resolve_type_name(t[0].name)
    data = body.read(preserve)
    if t[0].array and full == "System.Byte":
        return data
    text = data.decode("utf-8-sig", errors="replace")
    if full == "System.String":
        return text
    if full == "Newtonsoft.Json.Linq.JObject":
        return parse_object(text)
    if full == "Newtonsoft.Json.Linq.JArray":
        return parse_array(text)
    if full == "Newtonsoft.Json.Linq.JToken":
        return parse_json(text)
    raise NetException("System.NotSupportedException", f"Body cannot be read as '{t[0]}'.")


def body_form(body: ctx.Body, a: Args) -> dict[str, list[str]]:
    preserve = bool(a[0]) if a else False
    text = body.read(preserve).decode("utf-8", errors="replace")
    out: dict[str, list[str]] = {}
    for part in text.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.setdefault(unquote_plus(k), []).append(unquote_plus(v))
    return out


# --- hashing ------------------------------------------------------------------------------------------------


class HashAlgo:
    """``new HMACSHA256(key)`` / ``SHA256.Create()``: ``ComputeHash(bytes)``."""

    def __init__(self, name: str, key: bytes | None) -> None:
        self.name = name
        self.key = key

    def compute(self, data: bytes) -> bytes:
        if self.key is not None:
            return hmac.new(self.key, data, self.name).digest()
        return hashlib.new(self.name, data).digest()


_HASHES = {"SHA256": "sha256", "SHA1": "sha1", "SHA384": "sha384", "SHA512": "sha512", "MD5": "md5"}


def _hash_statics(name: str) -> dict[str, Method]:
    algo = _HASHES[name]
    return {
        "Create": lambda _s, a, t: HashAlgo(algo, None),
        "HashData": lambda _s, a, t: hashlib.new(algo, b_(a[0])).digest(),
    }


HASH_METHODS: dict[str, Method] = {
    "ComputeHash": lambda h, a, t: h.compute(b_(a[0])[i_(a[1]) : i_(a[1]) + i_(a[2])] if len(a) == 3 else b_(a[0])),
    "Dispose": lambda h, a, t: None,
    "Clear": lambda h, a, t: None,
}


# --- instance dispatch --------------------------------------------------------------------------------------


@lru_cache(maxsize=2048)
def _dataclass_attr(cls: type, name: str) -> str | None:
    """The attribute behind ``name`` on a context/domain dataclass (cached: asked on every member access)."""
    if not name[:1].isupper():
        return None
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z][a-z])", r"_\1\2", name).lower()
    names = {f.name for f in fields(cls)}
    if snake in names or snake in getattr(cls, "NET_PROPERTIES", frozenset()):
        return snake
    return name if name in names else None


def _dataclass_prop(obj: Any, name: str) -> Any:
    """A PascalCase member of a context/domain dataclass: its snake_case field, or ``NET_PROPERTIES``."""
    attr = _dataclass_attr(type(obj), name)
    if attr is None:
        raise MemberNotFound(name)
    return getattr(obj, attr)


def _jwt_prop(j: Jwt, name: str) -> Any:
    if name == "Claims":
        return j.claims
    simple = {
        "Algorithm": ("h", "alg"),
        "Type": ("h", "typ"),
        "Issuer": ("p", "iss"),
        "Subject": ("p", "sub"),
        "Id": ("p", "jti"),
    }
    if name in simple:
        where, key = simple[name]
        v = (j.header if where == "h" else j.payload).get(key)
        return None if v is None else (v if isinstance(v, str) else to_net_string(v))
    if name == "Audiences":
        aud = j.payload.get("aud")
        return [] if aud is None else [str(x) for x in (aud if isinstance(aud, list) else [aud])]
    if name in ("ExpirationTime", "NotBefore", "IssuedAt"):
        return j.date({"ExpirationTime": "exp", "NotBefore": "nbf", "IssuedAt": "iat"}[name])
    raise MemberNotFound(name)


def get_property(obj: Any, name: str) -> Any:
    """Read ``obj.Name`` (never called with None: the interpreter raises NullReferenceException first)."""
    attr = _CONTEXT_ATTRS.get((type(obj), name))
    if attr is not None:  # a member of the context model, resolved before (below, at the end)
        return getattr(obj, attr)
    if name == "HasValue":  # Nullable<T>.HasValue of a non-null value
        return True
    if name == "Value" and isinstance(
        obj, bool | int | float | Decimal | datetime | timedelta | uuid.UUID | DateTimeOffset
    ):
        return obj  # Nullable<T>.Value of a non-null value
    if isinstance(obj, str):
        if name == "Length":
            return len(obj)
    elif isinstance(obj, list):
        if isinstance(obj, Grouping) and name == "Key":
            return obj.key
        if name in LIST_PROPS:
            return LIST_PROPS[name](obj)
    elif isinstance(obj, bytes | bytearray):
        if name in ("Length", "LongLength"):
            return len(obj)
    elif isinstance(obj, ctx.MultiMap):
        if name in MULTIMAP_PROPS:
            return MULTIMAP_PROPS[name](obj)
    elif isinstance(obj, dict):
        if name in DICT_PROPS:
            return DICT_PROPS[name](obj)
    elif isinstance(obj, datetime):
        if name in DATE_PROPS:
            return DATE_PROPS[name](obj)
    elif isinstance(obj, DateTimeOffset):
        props = _dto_props()
        if name in props:
            return props[name](obj)
    elif isinstance(obj, timedelta):
        if name in TIMESPAN_PROPS:
            return TIMESPAN_PROPS[name](obj)
    elif isinstance(obj, JToken):
        if isinstance(obj, JProperty) and name in ("Name", "Value"):
            return obj.name if name == "Name" else obj.value
        if isinstance(obj, JValue) and name == "Value":
            return obj.value
        if isinstance(obj, JObject | JArray) and name == "Count":
            return len(obj.props if isinstance(obj, JObject) else obj.items)
        if name in JTOKEN_PROPS:
            return JTOKEN_PROPS[name](obj)
    elif isinstance(obj, Jwt):
        return _jwt_prop(obj, name)
    elif isinstance(obj, MatchObj):
        if name in MATCH_PROPS:
            return MATCH_PROPS[name](obj)
    elif isinstance(obj, GroupObj):
        if name in ("Success", "Value", "Index", "Length", "Name"):
            return getattr(obj, name)
        if name == "Captures":
            return [obj] if obj.Success else []
    elif isinstance(obj, MatchCollection | GroupCollection):
        if name == "Count":
            return len(items_of(obj))
    elif isinstance(obj, KeyValuePair):
        if name in ("Key", "Value"):
            return getattr(obj, name)
    elif isinstance(obj, NetTuple):
        m = re.fullmatch(r"Item([1-7])", name)
        if m and int(m.group(1)) <= len(obj.items):
            return obj.items[int(m.group(1)) - 1]
    elif isinstance(obj, AnonymousObject):
        if name in obj.members:
            return obj.members[name]
    elif isinstance(obj, NetUri):
        if name in URI_PROPS:
            return URI_PROPS[name](obj)
    elif isinstance(obj, StringBuilderObj):
        if name == "Length":
            return len(obj.text())
    elif isinstance(obj, NetEncoding):
        if name in ("WebName", "EncodingName", "BodyName", "HeaderName"):
            return obj.name
    elif isinstance(obj, HashSetObj):
        if name == "Count":
            return len(obj.items)
    elif isinstance(obj, HashAlgo):
        if name == "Key" and obj.key is not None:
            return obj.key
        if name == "HashSize":
            return hashlib.new(obj.name).digest_size * 8
    elif isinstance(obj, NetException):
        if name == "Message":
            return obj.message
    elif isinstance(obj, EnumValue):
        pass
    elif is_dataclass(obj) and not isinstance(obj, type):
        if isinstance(obj, ctx.Url) and name == "Port":
            return obj.port
        value = _dataclass_prop(obj, name)
        cls = type(obj)
        if cls.__module__ == ctx.__name__ and name not in ("Value", "HasValue") and len(_CONTEXT_ATTRS) < 4096:
            _CONTEXT_ATTRS[(cls, name)] = _dataclass_attr(cls, name)  # what every branch above would not take
        return value
    raise MemberNotFound(name)


#: (context model class, .NET member name) → attribute: a context member resolves once, not down the chain above.
_CONTEXT_ATTRS: dict[tuple[type, str], str | None] = {}


#: (type, method name) → the instance method ``call_method`` found for it: a call resolves once per type.
_METHODS: dict[tuple[type, str], Method] = {}


def _table_for(obj: Any) -> list[dict[str, Method]]:
    if isinstance(obj, str):
        return [STRING_METHODS]
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float | Decimal):
        return [NUMBER_METHODS]
    if isinstance(obj, list):
        return [LIST_METHODS]
    if isinstance(obj, ctx.MultiMap):
        return [MULTIMAP_METHODS]
    if isinstance(obj, dict):
        return [DICT_METHODS]
    if isinstance(obj, datetime):
        return [DATE_METHODS]
    if isinstance(obj, DateTimeOffset):
        return [DTO_METHODS]
    if isinstance(obj, timedelta):
        return [TIMESPAN_METHODS]
    if isinstance(obj, uuid.UUID):
        return [GUID_METHODS]
    if isinstance(obj, JObject):
        return [JOBJECT_METHODS, JTOKEN_METHODS]
    if isinstance(obj, JArray):
        return [JARRAY_METHODS, JTOKEN_METHODS]
    if isinstance(obj, JToken):
        return [JTOKEN_METHODS]
    methods = OTHER_METHODS.get(type(obj))
    if methods is None:  # a subclass (apim_mi.streaming's StreamedBody is a Body)
        methods = next((OTHER_METHODS[c] for c in type(obj).__mro__[1:] if c in OTHER_METHODS), {})
    return [methods]


def _number_to_string(n: Any, a: Args, _t: TArgs) -> str:
    return format_number(n, s_(a[0]) if a and a[0] is not None else None)


NUMBER_METHODS: dict[str, Method] = {
    "ToString": _number_to_string,
    "CompareTo": lambda n, a, t: compare(n, a[0]),
}

_SB_APPEND: Method = lambda sb, a, t: (sb.parts.append(check_len(to_net_string(a[0]) if a else "")), sb)[1]  # noqa: E731


def _sb_len_guard(sb: StringBuilderObj) -> StringBuilderObj:
    if sum(len(p) for p in sb.parts) > MAX_STRING:
        check_len("x" * (MAX_STRING + 1))
    return sb


OTHER_METHODS: dict[type, dict[str, Method]] = {
    ctx.Body: {
        "As": lambda b, a, t: body_as(b, a, t),
        "AsFormUrlEncodedContent": lambda b, a, t: body_form(b, a),
    },
    ctx.Context: {"Trace": lambda c, a, t: c.trace(to_net_string(a[0]))},
    ctx.Url: {"ToUri": lambda u, a, t: NetUri(str(u))},
    MatchObj: {
        "NextMatch": lambda m, a, t: _next_match(m),
        "Result": lambda m, a, t: _net_replacement(s_(a[0]))(m.m) if m.m else "",
    },
    GroupCollection: {"TryGetValue": lambda g, a, t: _try_out(a[-1], g.get(a[0]))},
    RegexObj: {
        n: (lambda name: lambda r, a, t: _regex_op(name, r.pattern, s_(a[0], "input"), a[1:]))(n)
        for n in ("IsMatch", "Match", "Matches", "Replace", "Split")
    },
    StringBuilderObj: {
        "Append": lambda sb, a, t: _sb_len_guard(_SB_APPEND(sb, a, t)),
        "AppendLine": lambda sb, a, t: _sb_len_guard(_SB_APPEND(sb, [to_net_string(a[0] if a else "") + "\n"], t)),
        "AppendFormat": lambda sb, a, t: _sb_len_guard(_SB_APPEND(sb, [composite_format(s_(a[0]), a[1:])], t)),
        "Insert": lambda sb, a, t: (
            sb.parts.__setitem__(slice(None), [sb.text()[: i_(a[0])] + to_net_string(a[1]) + sb.text()[i_(a[0]) :]]),
            sb,
        )[1],
        "Clear": lambda sb, a, t: (sb.parts.clear(), sb)[1],
    },
    NetEncoding: {
        "GetBytes": lambda e, a, t: _encoding_get_bytes(e, a),
        "GetString": lambda e, a, t: _encoding_get_string(e, a),
        "GetByteCount": lambda e, a, t: len(_encoding_get_bytes(e, a)),
    },
    random.Random: {
        "Next": lambda r, a, t: (
            r.randrange(0, 2**31 - 1)
            if not a
            else (
                r.randrange(0, max(i_(a[0]), 1))
                if len(a) == 1
                else (i_(a[0]) if i_(a[1]) <= i_(a[0]) else r.randrange(i_(a[0]), i_(a[1])))
            )
        ),
        "NextDouble": lambda r, a, t: r.random(),
        "NextInt64": lambda r, a, t: Long(r.randrange(0, 2**63 - 1)),
    },
    HashSetObj: HASHSET_METHODS,
    HashAlgo: HASH_METHODS,
    EnumValue: {"HasFlag": lambda e, a, t: (e.value & a[0].value) == a[0].value},
}
for _bt in (bytes, bytearray):
    OTHER_METHODS[_bt] = {}


def call_method(obj: Any, name: str, args: Args, targs: TArgs) -> Any:
    """Call ``obj.Name(args)``: instance methods, then universal ones, then extensions (LINQ) on sequences."""
    method = _METHODS.get((type(obj), name))
    if method is not None:  # resolved before (below) for this type and name
        return method(obj, args, targs)
    if isinstance(obj, Char):
        if name == "ToString":
            return str(obj)
        if name == "CompareTo":
            return compare(obj, args[0])
        if name == "Equals":
            return isinstance(args[0], Char) and obj == args[0]
    for table in _table_for(obj):
        fn = table.get(name)
        if fn is not None:
            if isinstance(obj, ClaimsDict) and name == "GetValueOrDefault":
                return _dict_get_or_default(obj, args, ())
            if not isinstance(obj, Char | ClaimsDict) and len(_METHODS) < 4096:
                _METHODS[(type(obj), name)] = fn  # the table depends on the type alone (_table_for)
            return fn(obj, args, targs)
    if isinstance(obj, Jwt) and name == "ToString":
        return obj.raw
    if name == "ToString" and not args:
        return to_net_string(obj)
    if name == "ToString" and isinstance(obj, bool):
        return to_net_string(obj)
    if name == "Equals" and len(args) == 1:
        return net_object_equals(obj, args[0])
    if name == "GetHashCode" and not args:
        return _hash_code(obj)
    if name == "GetType" and not args:
        return net_type_name(obj)
    if name in LINQ and (is_enumerable(obj) or isinstance(obj, MatchCollection | GroupCollection)):
        return LINQ[name](obj, args, targs)
    raise MemberNotFound(name)


def _hash_code(obj: Any) -> int:
    if isinstance(obj, bool):
        return int(obj)
    if is_integer(obj):
        return wrap32(int(obj) ^ (int(obj) >> 32)) if isinstance(obj, Long) else int(obj)
    if isinstance(obj, str):
        return str_hash(obj)
    if isinstance(obj, uuid.UUID):
        return guid_hash(obj)
    return wrap32(hash(hash_key(obj)))


# --- composite formatting -----------------------------------------------------------------------------------

_FORMAT_ITEM = re.compile(r"\{\{|\}\}|\{(\d+)(?:\s*,\s*(-?\d+))?(?::([^{}]*))?\}|[{}]")


def format_value(v: Any, fmt: str | None) -> str:
    """One ``{0:fmt}`` item: ``IFormattable.ToString(fmt)`` when there is a format."""
    if fmt is None or v is None:
        return to_net_string(v)
    if isinstance(v, bool | str):
        return to_net_string(v)
    if isinstance(v, int | float | Decimal):
        return format_number(v, fmt)
    if isinstance(v, datetime):
        return format_datetime(v, fmt)
    if isinstance(v, DateTimeOffset):
        return format_datetime(v.dt, fmt, offset_kind=True)
    if isinstance(v, timedelta):
        return format_timespan(v, fmt)
    if isinstance(v, uuid.UUID):
        return format_guid(v, fmt)
    return to_net_string(v)


def align(text: str, width: int) -> str:
    if abs(width) > 100_000:
        raise format_error("Alignment is too large.")
    return text.rjust(width) if width >= 0 else text.ljust(-width)


def composite_format(fmt: str, args: Args) -> str:
    """``String.Format``: ``{index[,alignment][:format]}`` with ``{{``/``}}`` escapes."""
    if len(args) == 1 and isinstance(args[0], list):
        args = args[0]
    out: list[str] = []
    pos = 0
    for m in _FORMAT_ITEM.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            out.append(tok[0])
            continue
        if m.group(1) is None:
            raise format_error("Input string was not in a correct format.")
        idx = int(m.group(1))
        if idx >= len(args):
            raise format_error(
                "Index (zero based) must be greater than or equal to zero and less than the size of the argument list."
            )
        text = format_value(args[idx], m.group(3))
        if m.group(2):
            text = align(text, int(m.group(2)))
        out.append(text)
    out.append(fmt[pos:])
    return join_checked(out, "")


def join_checked(parts: list[str], sep: str) -> str:
    total = sum(len(p) for p in parts) + len(sep) * max(len(parts) - 1, 0)
    if total > MAX_STRING:
        check_len("x" * (MAX_STRING + 1))
    return sep.join(parts)


def _string_join(a: Args) -> str:
    sep = "" if a[0] is None else to_net_string(a[0])
    vals = a[1:]
    if len(vals) == 1 and not isinstance(vals[0], str) and is_enumerable(vals[0]):
        vals = items_of(vals[0])
    if len(vals) == 3 and is_integer(vals[1]) and isinstance(a[1], list):  # Join(sep, string[], start, count)
        vals = a[1][i_(a[2]) : i_(a[2]) + i_(a[3])]
    return join_checked([to_net_string(v) for v in vals], sep)


def _string_concat(a: Args) -> str:
    vals = a
    if len(a) == 1 and not isinstance(a[0], str) and is_enumerable(a[0]):
        vals = items_of(a[0])
    return join_checked([to_net_string(v) for v in vals], "")


def _new_string(a: Args) -> str:
    if len(a) == 2 and isinstance(a[0], Char):
        n = i_(a[1])
        if n < 0:
            raise out_of_range("count")
        if n > MAX_STRING:
            check_len("x" * (MAX_STRING + 1))
        return str(a[0]) * n
    if isinstance(a[0], list):
        chars = a[0] if len(a) == 1 else a[0][i_(a[1]) : i_(a[1]) + i_(a[2])]
        return "".join(str(c) for c in chars)
    raise TypeError("string constructor")


# --- Math ---------------------------------------------------------------------------------------------------


def _math_round(a: Args) -> Any:
    v = a[0]
    digits = 0
    mode = ROUND_HALF_EVEN
    for x in a[1:]:
        if isinstance(x, EnumValue):
            mode = ROUND_HALF_UP if x.name == "AwayFromZero" else ROUND_HALF_EVEN
        else:
            digits = i_(x)
    if isinstance(v, Decimal):
        return v.quantize(Decimal(1).scaleb(-digits), rounding=mode)
    fv = f_(v)
    if math.isnan(fv) or math.isinf(fv):
        return fv
    d = Decimal(repr(fv)).quantize(Decimal(1).scaleb(-digits), rounding=mode)
    return float(d)


def _math_minmax(a: Args, sign: int) -> Any:
    x, y = a[0], a[1]
    if (isinstance(x, float) and math.isnan(x)) or (isinstance(y, float) and math.isnan(y)):
        return math.nan
    r = x if compare(x, y) * sign >= 0 else y
    if isinstance(x, float) or isinstance(y, float):
        return float(r)
    if isinstance(x, Long) or isinstance(y, Long):
        return Long(r)
    return r


def _math_abs(v: Any) -> Any:
    if is_integer(v):
        if (int(v) in (-(2**31),) and not isinstance(v, Long)) or int(v) == -(2**63):
            raise NetException(
                "System.OverflowException", "Negating the minimum value of a twos complement number is invalid."
            )
        return type(v)(abs(int(v))) if isinstance(v, Long) else abs(int(v))
    return abs(v)


def _mathf(fn: Callable[..., float]) -> Method:
    def f(_s: Any, a: Args, _t: TArgs) -> float:
        try:
            return fn(*(f_(x) for x in a))
        except (ValueError, ZeroDivisionError):
            return math.nan
        except OverflowError:
            return math.inf

    return f


def _floor_ceil(v: Any, fn: Callable[[Any], int]) -> Any:
    if isinstance(v, Decimal):
        return Decimal(fn(v))
    fv = f_(v)
    if math.isnan(fv) or math.isinf(fv):
        return fv
    return float(fn(fv))


def _math_log(a: Args) -> float:
    x = f_(a[0])
    try:
        if len(a) == 2:
            return math.log(x, f_(a[1]))
        return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)
    except (ValueError, ZeroDivisionError):
        return math.nan


def _math_pow(x: float, y: float) -> float:
    try:
        r = math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan
    return r


MATH_METHODS: dict[str, Method] = {
    "Max": lambda _s, a, t: _math_minmax(a, 1),
    "Min": lambda _s, a, t: _math_minmax(a, -1),
    "Abs": lambda _s, a, t: _math_abs(a[0]),
    "Round": lambda _s, a, t: _math_round(a),
    "Floor": lambda _s, a, t: _floor_ceil(a[0], math.floor),
    "Ceiling": lambda _s, a, t: _floor_ceil(a[0], math.ceil),
    "Truncate": lambda _s, a, t: _floor_ceil(a[0], math.trunc),
    "Pow": _mathf(_math_pow),
    "Sqrt": _mathf(lambda x: math.sqrt(x) if x >= 0 else math.nan),
    "Exp": _mathf(math.exp),
    "Log": lambda _s, a, t: _math_log(a),
    "Log10": _mathf(lambda x: math.log10(x) if x > 0 else (-math.inf if x == 0 else math.nan)),
    "Log2": _mathf(lambda x: math.log2(x) if x > 0 else (-math.inf if x == 0 else math.nan)),
    "Sin": _mathf(math.sin), "Cos": _mathf(math.cos), "Tan": _mathf(math.tan), "Atan": _mathf(math.atan),
    "Sign": lambda _s, a, t: (f_(a[0]) > 0) - (f_(a[0]) < 0),
    "Clamp": lambda _s, a, t: _math_minmax([_math_minmax([a[0], a[1]], 1), a[2]], -1),
}  # fmt: skip


# --- enums --------------------------------------------------------------------------------------------------

# ``StringComparer.X`` stands for the comparison ``StringComparison.X`` names, so both read one table.
_STRING_COMPARISON: dict[str, int] = {
    "CurrentCulture": 0,
    "CurrentCultureIgnoreCase": 1,
    "InvariantCulture": 2,
    "InvariantCultureIgnoreCase": 3,
    "Ordinal": 4,
    "OrdinalIgnoreCase": 5,
}

ENUMS: dict[str, dict[str, int]] = {
    "System.StringComparison": _STRING_COMPARISON,
    "System.StringComparer": _STRING_COMPARISON,
    "System.StringSplitOptions": {"None": 0, "RemoveEmptyEntries": 1, "TrimEntries": 2},
    "System.DateTimeKind": {"Unspecified": 0, "Utc": 1, "Local": 2},
    "System.MidpointRounding": {"ToEven": 0, "AwayFromZero": 1, "ToZero": 2},
    "System.UriPartial": {"Scheme": 0, "Authority": 1, "Path": 2, "Query": 3},
    "System.DayOfWeek": {d: (i + 1) % 7 for i, d in enumerate(_DAY_NAMES)},
    "System.Text.RegularExpressions.RegexOptions": _REGEX_OPTIONS,
    "Newtonsoft.Json.Formatting": {"None": 0, "Indented": 1},
    "Newtonsoft.Json.Linq.JTokenType": {
        n: i
        for i, n in enumerate(
            [
                "None",
                "Object",
                "Array",
                "Constructor",
                "Property",
                "Comment",
                "Integer",
                "Float",
                "String",
                "Boolean",
                "Null",
                "Undefined",
                "Date",
                "Raw",
                "Bytes",
                "Guid",
                "Uri",
                "TimeSpan",
            ]
        )
    },
}


# --- static members and constructors ------------------------------------------------------------------------


def _now_utc() -> datetime:
    return datetime.now(UTC)


def _dict_ctor(a: Args, t: TArgs) -> dict[Any, Any]:
    if a and isinstance(a[0], EnumValue) and ignore_case(a[0]):
        return CIDict()
    if a and isinstance(a[0], dict):
        return CIDict(a[0]) if isinstance(a[0], CIDict) else dict(a[0])
    return {}


def _exception_ctor(full: str) -> Callable[[Args, TArgs], NetException]:
    def f(a: Args, _t: TArgs) -> NetException:
        return NetException(full, to_net_string(a[0]) if a else f"Exception of type '{full}' was thrown.")

    return f


def _random_ctor(a: Args, _t: TArgs) -> random.Random:
    return random.Random(i_(a[0])) if a else random.Random(secrets.randbits(64))


def _new_guid(a: Args, _t: TArgs) -> uuid.UUID:
    if not a:
        return uuid.UUID(int=0)
    if isinstance(a[0], bytes | bytearray | list):
        data = b_(a[0])
        if len(data) != 16:
            raise arg_error("Byte array for Guid must be exactly 16 bytes long.", "b")
        return uuid.UUID(bytes_le=data)
    return parse_guid(a[0])


def _jvalue_ctor(a: Args, _t: TArgs) -> JValue:
    v = a[0]
    return JValue(v.value if isinstance(v, JValue) else (Long(v) if type(v) is int else v))


def _list_ctor(a: Args, _t: TArgs) -> list[Any]:
    if a and not is_integer(a[0]):
        return new_list(items_of(a[0]))
    return []


def _hashset_ctor(a: Args, _t: TArgs) -> HashSetObj:
    items = [x for x in a if not isinstance(x, EnumValue)]
    ic = any(isinstance(x, EnumValue) and ignore_case(x) for x in a)
    return HashSetObj(items_of(items[0]) if items else [], ic)


CONSTRUCTORS: dict[str, Callable[[Args, TArgs], Any]] = {
    "System.String": lambda a, t: _new_string(a),
    "System.Random": _random_ctor,
    "System.Uri": lambda a, t: _new_uri(a),
    "System.DateTime": lambda a, t: _new_datetime(a),
    "System.DateTimeOffset": lambda a, t: (
        _dto_of(a[0])
        if len(a) == 1
        else DateTimeOffset(_new_datetime([x for x in a[:-1]]).replace(tzinfo=timezone(a[-1])))
    ),
    "System.TimeSpan": lambda a, t: _new_timespan(a),
    "System.Guid": _new_guid,
    "System.Text.StringBuilder": lambda a, t: StringBuilderObj([s_(a[0])] if a and isinstance(a[0], str) else []),
    "System.Text.RegularExpressions.Regex": lambda a, t: RegexObj(
        compile_regex(s_(a[0], "pattern"), a[1].value if len(a) > 1 else 0)
    ),
    "System.Collections.Generic.List": _list_ctor,
    "System.Collections.Generic.Dictionary": _dict_ctor,
    "System.Collections.Generic.HashSet": _hashset_ctor,
    "System.Collections.Generic.KeyValuePair": lambda a, t: KeyValuePair(a[0], a[1]),
    "System.Object": lambda a, t: AnonymousObject({}),
    "Newtonsoft.Json.Linq.JObject": lambda a, t: JObject(*a),
    "Newtonsoft.Json.Linq.JArray": lambda a, t: JArray(*a),
    "Newtonsoft.Json.Linq.JProperty": lambda a, t: JProperty(
        s_(a[0], "name"), a[1] if len(a) == 2 else (list(a[1:]) if len(a) > 2 else None)
    ),
    "Newtonsoft.Json.Linq.JValue": _jvalue_ctor,
    **{
        f"System.Security.Cryptography.HMAC{n}": (
            lambda name: lambda a, t: HashAlgo(name, b_(a[0]) if a else secrets.token_bytes(64))
        )(algo)
        for n, algo in _HASHES.items()
    },
    **{
        f"System.{n}": _exception_ctor(f"System.{n}")
        for n in (
            "Exception",
            "ArgumentException",
            "ArgumentNullException",
            "FormatException",
            "InvalidOperationException",
            "NullReferenceException",
            "InvalidCastException",
            "OverflowException",
        )
    },
    "System.Collections.Generic.KeyNotFoundException": _exception_ctor(
        "System.Collections.Generic.KeyNotFoundException"
    ),
}


def _props_methods() -> tuple[dict[str, dict[str, Prop]], dict[str, dict[str, Method]]]:
    """Static properties and methods per full type name (built once; read-only afterwards)."""
    P: dict[str, dict[str, Prop]] = {}
    M: dict[str, dict[str, Method]] = {}
    P["System.String"] = {"Empty": lambda _: ""}
    M["System.String"] = {
        "IsNullOrEmpty": lambda _s, a, t: a[0] is None or s_(a[0]) == "",
        "IsNullOrWhiteSpace": lambda _s, a, t: a[0] is None or s_(a[0]).strip(_WS) == "",
        "Format": lambda _s, a, t: composite_format(
            s_(a[1] if not isinstance(a[0], str) else a[0], "format"), a[1:] if isinstance(a[0], str) else a[2:]
        ),
        "Concat": lambda _s, a, t: _string_concat(a),
        "Join": lambda _s, a, t: _string_join(a),
        "Equals": lambda _s, a, t: (
            (a[0] is None and a[1] is None) or (a[0] is not None and a[1] is not None and _str_equals(a[0], a[1:]))
        ),
        "Compare": lambda _s, a, t: _compare_strings(a[0], a[1], ignore_case(a[2]) if len(a) > 2 else False),
        "CompareOrdinal": lambda _s, a, t: _compare_strings(a[0], a[1], False),
        "Copy": lambda _s, a, t: s_(a[0]),
    }
    for full, bits, lo, hi in (
        ("System.Int32", 32, -(2**31), 2**31 - 1),
        ("System.Int64", 64, -(2**63), 2**63 - 1),
        ("System.Int16", 16, -(2**15), 2**15 - 1),
    ):
        parser: Callable[[Any], Any] = (lambda b: lambda s: parse_int(s, b))(bits)
        dflt = Long(0) if bits == 64 else 0
        P[full], M[full] = _numeric_statics(
            bits, parser, Long(lo) if bits == 64 else lo, Long(hi) if bits == 64 else hi, dflt
        )
    P["System.Byte"] = {"MaxValue": lambda _: 255, "MinValue": lambda _: 0}
    M["System.Byte"] = {"Parse": lambda _s, a, t: cast(parse_int(a[0]), TypeRef("byte"))}
    for full in ("System.Double", "System.Single"):
        P[full], M[full] = _numeric_statics(None, parse_float, -1.7976931348623157e308, 1.7976931348623157e308, 0.0)
        P[full].update(
            {
                "NaN": lambda _: math.nan,
                "PositiveInfinity": lambda _: math.inf,
                "NegativeInfinity": lambda _: -math.inf,
                "Epsilon": lambda _: 5e-324,
            }
        )
        M[full].update(
            {"IsNaN": lambda _s, a, t: math.isnan(f_(a[0])), "IsInfinity": lambda _s, a, t: math.isinf(f_(a[0]))}
        )
    P["System.Decimal"], M["System.Decimal"] = _numeric_statics(
        None,
        parse_decimal,
        Decimal("-79228162514264337593543950335"),
        Decimal("79228162514264337593543950335"),
        Decimal(0),
    )
    M["System.Decimal"]["Round"] = lambda _s, a, t: _math_round(a)
    P["System.Boolean"] = {"TrueString": lambda _: "True", "FalseString": lambda _: "False"}
    M["System.Boolean"] = {"Parse": lambda _s, a, t: parse_bool(a[0]), "TryParse": _try_parse(parse_bool, False)}
    P["System.Char"] = {"MaxValue": lambda _: Char("\uffff"), "MinValue": lambda _: Char("\0")}
    M["System.Char"] = {
        n: (lambda f: lambda _s, a, t: f(a))(_char_method(n))
        for n in (
            "IsDigit",
            "IsLetter",
            "IsLetterOrDigit",
            "IsWhiteSpace",
            "IsUpper",
            "IsLower",
            "IsPunctuation",
            "IsControl",
            "ToUpper",
            "ToLower",
            "ToUpperInvariant",
            "ToLowerInvariant",
        )
    }
    M["System.Char"]["Parse"] = lambda _s, a, t: (
        Char(s_(a[0]))
        if len(s_(a[0])) == 1
        else (_ for _ in ()).throw(format_error("String must be exactly one character long."))
    )
    P["System.Math"] = {"PI": lambda _: math.pi, "E": lambda _: math.e}
    M["System.Math"] = MATH_METHODS
    M["System.Convert"] = {
        "ToBase64String": lambda _s, a, t: to_base64(a),
        "FromBase64String": lambda _s, a, t: from_base64(a[0]),
        "ToInt32": _convert_to_int(32),
        "ToInt64": _convert_to_int(64),
        "ToInt16": _convert_to_int(16),
        "ToDouble": lambda _s, a, t: _convert_to_double(a[0]),
        "ToSingle": lambda _s, a, t: _convert_to_double(a[0]),
        "ToDecimal": lambda _s, a, t: (
            Decimal(str(a[0]))
            if isinstance(a[0], float)
            else (parse_decimal(a[0]) if isinstance(a[0], str) else cast(a[0], TypeRef("decimal")))
        ),
        "ToBoolean": lambda _s, a, t: _convert_to_bool(a[0]),
        "ToString": lambda _s, a, t: _convert_to_string(a),
        "ToByte": lambda _s, a, t: cast(_convert_to_int(32)(_s, a, t), TypeRef("byte")),
        "ToChar": lambda _s, a, t: Char(s_(a[0])[0]) if isinstance(a[0], str) else cast(a[0], TypeRef("char")),
        "ToHexString": lambda _s, a, t: b_(a[0]).hex().upper(),
        "FromHexString": lambda _s, a, t: _from_hex(a[0]),
        "ToDateTime": lambda _s, a, t: (
            parse_datetime(s_(a[0])) if isinstance(a[0], str) else cast(a[0], TypeRef("DateTime"))
        ),
    }
    P["System.DateTime"] = {
        "UtcNow": lambda _: _now_utc(),
        "Now": lambda _: _now_utc().replace(tzinfo=None),
        "Today": lambda _: _now_utc().replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None),
        "MinValue": lambda _: datetime(1, 1, 1),
        "MaxValue": lambda _: datetime(9999, 12, 31, 23, 59, 59, 999999),
        "UnixEpoch": lambda _: _EPOCH,
    }
    M["System.DateTime"] = {
        "Parse": lambda _s, a, t: parse_datetime(s_(a[0], "s")),
        "TryParse": _try_parse(lambda s: parse_datetime(s_(s)), datetime(1, 1, 1)),
        "ParseExact": lambda _s, a, t: _parse_exact(a),
        "TryParseExact": lambda _s, a, t: _try_parse(lambda _: _parse_exact(a), datetime(1, 1, 1))(_s, a, t),
        "SpecifyKind": lambda _s, a, t: a[0].replace(tzinfo=UTC) if a[1].name == "Utc" else a[0].replace(tzinfo=None),
        "DaysInMonth": lambda _s, a, t: __import__("calendar").monthrange(i_(a[0]), i_(a[1]))[1],
        "IsLeapYear": lambda _s, a, t: __import__("calendar").isleap(i_(a[0])),
        "Compare": lambda _s, a, t: compare(a[0], a[1]),
        "FromFileTimeUtc": lambda _s, a, t: (datetime(1601, 1, 1) + timedelta(microseconds=i_(a[0]) // 10)).replace(
            tzinfo=UTC
        ),
    }
    P["System.DateTimeOffset"] = {
        "UtcNow": lambda _: DateTimeOffset(_now_utc()),
        "Now": lambda _: DateTimeOffset(_now_utc()),
        "MinValue": lambda _: DateTimeOffset(datetime(1, 1, 1, tzinfo=UTC)),
        "UnixEpoch": lambda _: DateTimeOffset(_EPOCH),
    }
    M["System.DateTimeOffset"] = {
        "FromUnixTimeSeconds": _from_unix(1),
        "FromUnixTimeMilliseconds": _from_unix(1000),
        "Parse": lambda _s, a, t: _parse_dto(a[0]),
        "TryParse": _try_parse(lambda s: _parse_dto(s), None),
    }
    P["System.TimeSpan"] = {
        "Zero": lambda _: timedelta(0),
        "MaxValue": lambda _: timedelta.max,
        "MinValue": lambda _: timedelta.min,
    }
    M["System.TimeSpan"] = {
        "FromDays": _ts_from("days"),
        "FromHours": _ts_from("hours"),
        "FromMinutes": _ts_from("minutes"),
        "FromSeconds": _ts_from("seconds"),
        "FromMilliseconds": _ts_from("milliseconds"),
        "FromTicks": _ts_from("ticks"),
        "Parse": lambda _s, a, t: _parse_timespan(a[0]),
        "TryParse": _try_parse(_parse_timespan, timedelta(0)),
    }
    P["System.Guid"] = {"Empty": lambda _: uuid.UUID(int=0)}
    M["System.Guid"] = {
        "NewGuid": lambda _s, a, t: uuid.uuid4(),
        "Parse": lambda _s, a, t: parse_guid(a[0]),
        "TryParse": _try_parse(parse_guid, uuid.UUID(int=0)),
    }
    M["System.Array"] = {
        "Exists": lambda _s, a, t: any(_truthy(call_fn(a[1], x)) for x in items_of(a[0])),
        "TrueForAll": lambda _s, a, t: all(_truthy(call_fn(a[1], x)) for x in items_of(a[0])),
        "Find": lambda _s, a, t: next((x for x in items_of(a[0]) if _truthy(call_fn(a[1], x))), None),
        "FindAll": lambda _s, a, t: [x for x in items_of(a[0]) if _truthy(call_fn(a[1], x))],
        "FindIndex": lambda _s, a, t: next((i for i, x in enumerate(items_of(a[0])) if _truthy(call_fn(a[1], x))), -1),
        "IndexOf": lambda _s, a, t: next((i for i, x in enumerate(items_of(a[0])) if net_object_equals(x, a[1])), -1),
        "Empty": lambda _s, a, t: [],
        "Reverse": lambda _s, a, t: a[0].reverse(),
        "Sort": lambda _s, a, t: a[0].sort(key=cmp_to_key(compare)),
        "ConvertAll": lambda _s, a, t: [call_fn(a[1], x) for x in items_of(a[0])],
        "Copy": lambda _s, a, t: _array_copy(a),
    }
    M["System.BitConverter"] = {
        "ToString": lambda _s, a, t: "-".join(
            f"{x:02X}"
            for x in b_(a[0])[(i_(a[1]) if len(a) > 1 else 0) : (i_(a[1]) + i_(a[2]) if len(a) > 2 else None)]
        ),
        "GetBytes": lambda _s, a, t: _bitconverter_bytes(a[0]),
        "ToInt32": lambda _s, a, t: int.from_bytes(b_(a[0])[i_(a[1]) : i_(a[1]) + 4], "little", signed=True),
        "ToInt64": lambda _s, a, t: Long(int.from_bytes(b_(a[0])[i_(a[1]) : i_(a[1]) + 8], "little", signed=True)),
    }
    M["System.Uri"] = {
        "EscapeDataString": lambda _s, a, t: escape_data_string(a[0]),
        "UnescapeDataString": lambda _s, a, t: unquote(s_(a[0], "stringToUnescape")),
        "EscapeUriString": lambda _s, a, t: quote(s_(a[0]), safe=_UNRESERVED + ":/?#[]@!$&'()*+,;=%"),
        "IsWellFormedUriString": lambda _s, a, t: _well_formed(a[0]),
        "TryCreate": lambda _s, a, t: _try_out(a[-1], _try_uri(a[0])),
    }
    P["System.Uri"] = {"UriSchemeHttp": lambda _: "http", "UriSchemeHttps": lambda _: "https"}
    web = {
        "UrlEncode": lambda _s, a, t: url_encode(a[0]),
        "UrlDecode": lambda _s, a, t: None if a[0] is None else unquote_plus(s_(a[0])),
        "HtmlEncode": lambda _s, a, t: _html_encode(a[0]),
        "HtmlDecode": lambda _s, a, t: None if a[0] is None else html.unescape(s_(a[0])),
    }
    M["System.Net.WebUtility"] = web
    M["System.Web.HttpUtility"] = {**web, "UrlEncode": lambda _s, a, t: _http_utility_encode(a[0])}
    P["System.Text.Encoding"] = {k: (lambda enc: lambda _: enc)(e) for k, e in ENCODINGS.items()}
    M["System.Text.Encoding"] = {"GetEncoding": lambda _s, a, t: _get_encoding(a[0])}
    M["System.Text.RegularExpressions.Regex"] = {
        n: _regex_static(n) for n in ("IsMatch", "Match", "Matches", "Replace", "Split", "Escape", "Unescape")
    }
    M["System.Text.RegularExpressions.Match"] = {}
    P["System.Text.RegularExpressions.Match"] = {"Empty": lambda _: MatchObj(None)}
    M["System.Linq.Enumerable"] = {
        "Range": lambda _s, a, t: _range(a),
        "Repeat": lambda _s, a, t: new_list([a[0]] * max(min(i_(a[1]), MAX_ITEMS + 1), 0)),
        "Empty": lambda _s, a, t: [],
        **{k: (lambda fn: lambda _s, a, t: fn(a[0], a[1:], t))(f) for k, f in LINQ.items()},
    }
    M["Newtonsoft.Json.JsonConvert"] = {
        "SerializeObject": lambda _s, a, t: serialize(a[0], _formatting(a, 1)),
        "DeserializeObject": lambda _s, a, t: deserialize(a, t),
        "ToString": lambda _s, a, t: serialize(a[0]),
    }
    for full, parser2 in (
        ("Newtonsoft.Json.Linq.JObject", parse_object),
        ("Newtonsoft.Json.Linq.JArray", parse_array),
        ("Newtonsoft.Json.Linq.JToken", parse_json),
    ):
        M[full] = {
            "Parse": (lambda p: lambda _s, a, t: p(s_(a[0], "json")))(parser2),
            "FromObject": (lambda fl: lambda _s, a, t: cast(from_object(a[0]), TypeRef(fl)))(full),
            "Load": (lambda p: lambda _s, a, t: p(to_net_string(a[0])))(parser2),
        }
    M["Newtonsoft.Json.Linq.JToken"]["DeepEquals"] = lambda _s, a, t: _deep_equals(a[0], a[1])
    M["Newtonsoft.Json.Linq.JValue"] = {
        "CreateNull": lambda _s, a, t: JValue(None),
        "CreateString": lambda _s, a, t: JValue(a[0]),
    }
    M["System.Tuple"] = {"Create": lambda _s, a, t: NetTuple(tuple(a))}
    for n in _HASHES:
        M[f"System.Security.Cryptography.{n}"] = _hash_statics(n)
    M["System.Security.Cryptography.RandomNumberGenerator"] = {
        "GetBytes": lambda _s, a, t: secrets.token_bytes(min(i_(a[0]), MAX_ITEMS)),
        "GetInt32": lambda _s, a, t: (
            secrets.randbelow(i_(a[-1]) - (i_(a[0]) if len(a) > 1 else 0)) + (i_(a[0]) if len(a) > 1 else 0)
        ),
    }
    M["System.Enum"] = {"Parse": lambda _s, a, t: _enum_parse(a, t)}
    for full, members in ENUMS.items():
        P.setdefault(full, {}).update(
            {k: (lambda en, nm, val: lambda _: EnumValue(en, nm, val))(full, k, v) for k, v in members.items()}
        )
    return P, M


def _range(a: Args) -> list[int]:
    start, count = i_(a[0]), i_(a[1])
    if count < 0 or start + count - 1 > 2**31 - 1:
        raise out_of_range("count")
    _check_count(count)
    return list(range(start, start + count))


def _array_copy(a: Args) -> None:
    """``Array.Copy(src, dst, length)`` / ``Array.Copy(src, srcIndex, dst, dstIndex, length)``."""
    if len(a) == 3:
        src, si, dst, di, n = a[0], 0, a[1], 0, i_(a[2])
    else:
        src, si, dst, di, n = a[0], i_(a[1]), a[2], i_(a[3]), i_(a[4])
    if n < 0 or si < 0 or di < 0 or si + n > len(src) or di + n > len(dst):
        raise arg_error("Source array was not long enough. Check srcIndex and length, and the array's lower bounds.")
    dst[di : di + n] = src[si : si + n]


def _from_hex(v: Any) -> bytes:
    try:
        return bytes.fromhex(s_(v))
    except ValueError:
        raise format_error("The input is not a valid hex string as it contains a non-hex character.") from None


def _http_utility_encode(v: Any) -> str | None:
    if v is None:
        return None
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s_(v), safe="-_.!*()").replace("%20", "+"))


def _bitconverter_bytes(v: Any) -> bytes:
    if isinstance(v, bool):
        return bytes([int(v)])
    if isinstance(v, Long):
        return int(v).to_bytes(8, "little", signed=True)
    if is_integer(v):
        return int(v).to_bytes(4, "little", signed=True)
    import struct

    return struct.pack("<d", f_(v))


def _well_formed(v: Any) -> bool:
    if v is None:
        return False
    try:
        _new_uri([s_(v)])
    except NetException:
        return False
    return " " not in s_(v)


def _try_uri(v: Any) -> NetUri | None:
    try:
        return _new_uri([s_(v)])
    except (NetException, TypeError):
        return None


def _get_encoding(name: Any) -> NetEncoding:
    key = (
        str(name)
        if not is_integer(name)
        else {65001: "utf-8", 20127: "us-ascii", 1200: "utf-16", 28591: "iso-8859-1"}.get(int(name), "")
    ).lower()
    for e in ENCODINGS.values():
        if e.name.lower() == key or e.codec == key:
            return e
    raise arg_error(f"'{name}' is not a supported encoding name.", "name")


def _parse_dto(s: Any) -> DateTimeOffset:
    text = s_(s).strip()
    iso = text[:-1] + "+00:00" if text.endswith("Z") else text
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)", iso)
    if m:
        iso = f"{m.group(1)}.{(m.group(2) + '000000')[:6]}{m.group(3)}"
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        dt = parse_datetime(text)
    return _dto_of(dt)


def _enum_parse(a: Args, t: TArgs) -> EnumValue:
    if t:
        full = resolve_type_name(t[0].name) or t[0].name
        text = s_(a[0])
        ic = len(a) > 1 and a[1] is True
    else:
        full = a[0] if isinstance(a[0], str) else getattr(a[0], "full", "")
        text = s_(a[1])
        ic = len(a) > 2 and a[2] is True
    for name, v in ENUMS.get(full, {}).items():
        if name == text or (ic and name.lower() == text.lower()):
            return EnumValue(full, name, v)
    raise arg_error(f"Requested value '{text}' was not found.")


def _deep_equals(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return from_object(a).to_json(False) == from_object(b).to_json(False)


STATIC_PROPS, STATIC_METHODS = _props_methods()


def get_static(full: str, name: str) -> Any:
    props = STATIC_PROPS.get(full, {})
    if name in props:
        return props[name](None)
    raise MemberNotFound(name)


def call_static(full: str, name: str, args: Args, targs: TArgs) -> Any:
    fn = STATIC_METHODS.get(full, {}).get(name)
    if fn is None:
        raise MemberNotFound(name)
    return fn(None, args, targs)


def has_static_method(full: str, name: str) -> bool:
    return name in STATIC_METHODS.get(full, {})


def construct(full: str, args: Args, targs: TArgs) -> Any:
    ctor = CONSTRUCTORS.get(full)
    if ctor is None:
        raise MemberNotFound(".ctor")
    return ctor(args, targs)


def index_get(obj: Any, keys: Args) -> Any:
    """``obj[key]`` for strings, arrays, lists, dictionaries, header maps, JSON tokens, regex groups, JWT claims."""
    if len(keys) != 1:
        raise TypeError("one index expected")
    k = keys[0]
    if isinstance(obj, str):
        i = i_(k)
        if not 0 <= i < len(obj):
            raise NetException("System.IndexOutOfRangeException", "Index was outside the bounds of the array.")
        return Char(obj[i])
    if isinstance(obj, list | bytes | bytearray):
        if isinstance(k, JValue):
            k = k.value
        i = i_(k)
        if not 0 <= i < len(obj):
            raise NetException("System.IndexOutOfRangeException", "Index was outside the bounds of the array.")
        return obj[i]
    if isinstance(obj, ctx.MultiMap):
        name = s_(k, "key")
        if name not in obj:
            raise NetException(
                "System.Collections.Generic.KeyNotFoundException",
                f"The given key '{name}' was not present in the dictionary.",
            )
        return obj.get_all(name)
    if isinstance(obj, dict):
        req(k, "key")
        if k not in obj:
            raise NetException(
                "System.Collections.Generic.KeyNotFoundException",
                f"The given key '{to_net_string(k)}' was not present in the dictionary.",
            )
        return obj[k]
    if isinstance(obj, JToken):
        return _jtoken_item(obj, k)
    if isinstance(obj, GroupCollection):
        return obj.get(k)
    if isinstance(obj, MatchCollection):
        return obj.matches[i_(k)] if 0 <= i_(k) < len(obj.matches) else (_ for _ in ()).throw(out_of_range("i"))
    raise MemberNotFound("this[]")


def index_set(obj: Any, keys: Args, value: Any) -> None:
    if len(keys) != 1:
        raise TypeError("one index expected")
    k = keys[0]
    if isinstance(obj, list | bytearray):
        i = i_(k)
        if not 0 <= i < len(obj):
            raise NetException("System.IndexOutOfRangeException", "Index was outside the bounds of the array.")
        obj[i] = i_(value) & 0xFF if isinstance(obj, bytearray) else value
        return
    if isinstance(obj, ctx.MultiMap | bytes):
        raise NetException("System.NotSupportedException", "Collection is read-only.")
    if isinstance(obj, dict):
        req(k, "key")
        obj[k] = value
        _check_count(len(obj))
        return
    if isinstance(obj, JObject):
        obj.set_item(s_(k, "propertyName"), value)
        return
    if isinstance(obj, JArray):
        obj.set_item(i_(k.value if isinstance(k, JValue) else k), value)
        return
    raise MemberNotFound("this[]")


def set_property(obj: Any, name: str, value: Any) -> None:
    """Object initialisers and assignments to the few writable members (JProperty.Value, anonymous objects)."""
    if isinstance(obj, JProperty) and name == "Value":
        obj.value = value
        return
    if isinstance(obj, JValue) and name == "Value":
        obj.value = value
        return
    if isinstance(obj, HashAlgo) and name == "Key":
        obj.key = b_(value)
        return
    raise NetException(
        "System.InvalidOperationException", f"Property or indexer '{name}' cannot be assigned to -- it is read only"
    )


def null_check(v: Any) -> Any:
    if v is None:
        raise null_reference()
    return v
