""".NET value representations and formatting shared by the interpreter and the runtime members.

Python values stand for .NET ones: ``str`` = String, ``Char`` (a 1-char str) = Char, ``int`` = Int32, ``Long`` = Int64,
``float`` = Double, ``Decimal`` = Decimal, ``bool`` = Boolean, ``None`` = null, ``list`` = arrays/List<T>,
``bytes``/``bytearray`` = byte[], ``dict`` = Dictionary, ``datetime`` = DateTime, ``timedelta`` = TimeSpan,
``uuid.UUID`` = Guid. Int32/Int64 arithmetic wraps like unchecked C#, which also keeps hostile loops from building
huge integers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

MAX_STRING = 8_000_000  # characters; a string longer than this is an OutOfMemoryException in the sandbox


class Char(str):
    """A .NET ``char``: behaves as a one-character string, but is a number in arithmetic."""

    __slots__ = ()


class Long(int):
    """A .NET ``long`` (Int64); plain ``int`` values are Int32."""

    __slots__ = ()


class NetException(Exception):
    """A .NET exception raised by runtime members; ``type`` is the full .NET type name."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type = type_name
        self.message = message


def null_reference() -> NetException:
    return NetException("System.NullReferenceException", "Object reference not set to an instance of an object.")


def invalid_cast(value: Any, target: str) -> NetException:
    return NetException(
        "System.InvalidCastException", f"Unable to cast object of type '{type_name(value)}' to type '{target}'."
    )


def format_error(message: str = "Input string was not in a correct format.") -> NetException:
    return NetException("System.FormatException", message)


@dataclass(frozen=True)
class EnumValue:
    """A member of a .NET enum such as ``StringComparison.OrdinalIgnoreCase``."""

    enum: str
    name: str
    value: int

    def __str__(self) -> str:
        return self.name


@dataclass
class KeyValuePair:
    Key: Any
    Value: Any


@dataclass
class NetTuple:
    """``Tuple.Create(a, b)`` / ``Tuple<T1,T2>``: members Item1..Item7."""

    items: tuple[Any, ...]


def check_len(s: str) -> str:
    if len(s) > MAX_STRING:
        raise NetException("System.OutOfMemoryException", "Insufficient memory to continue the execution.")
    return s


# --- integers -----------------------------------------------------------------------------------------------


def wrap32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def wrap64(v: int) -> Long:
    v &= 0xFFFFFFFFFFFFFFFF
    return Long(v - 0x10000000000000000 if v & 0x8000000000000000 else v)


def is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (isinstance(v, int | float | Decimal) and not isinstance(v, bool)) or isinstance(v, Char)


def num_value(v: Any) -> int | float | Decimal:
    """The arithmetic value of a number or a char."""
    if isinstance(v, Char):
        return ord(v)
    return v


# --- type names ---------------------------------------------------------------------------------------------


def type_name(v: Any) -> str:
    """The full .NET type name of a value, for error messages and ``GetType()``."""
    from .runtime_types import net_type_name  # late: runtime_types knows the domain classes

    return net_type_name(v)


# --- number formatting --------------------------------------------------------------------------------------


def format_double(v: float) -> str:
    """``double.ToString()`` of .NET Core 3.0+: shortest round-trip, scientific below 1e-4 and from 1e15."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "-0" if math.copysign(1, v) < 0 else "0"
    neg = v < 0
    dec = Decimal(repr(abs(v))).normalize()
    digits = "".join(map(str, dec.as_tuple().digits))
    exp = dec.adjusted()
    if exp >= 15 or exp < -4:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        out = f"{m}E{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    elif exp >= 0:
        out = digits.ljust(exp + 1, "0") if len(digits) <= exp + 1 else digits[: exp + 1] + "." + digits[exp + 1 :]
    else:
        out = "0." + "0" * (-exp - 1) + digits
    return ("-" if neg else "") + out


def _group(int_digits: str) -> str:
    out = []
    while len(int_digits) > 3:
        out.insert(0, int_digits[-3:])
        int_digits = int_digits[:-3]
    out.insert(0, int_digits)
    return ",".join(out)


def _round_half_away(v: Decimal, places: int) -> Decimal:
    from decimal import ROUND_HALF_UP

    return v.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def format_number(v: Any, fmt: str | None) -> str:
    """``ToString(format)`` for integers, doubles and decimals: standard D/X/F/N/P/E/G/C/R and simple customs."""
    if isinstance(v, Char):
        return str(v)
    if not fmt:
        if isinstance(v, float):
            return format_double(v)
        return str(v)
    spec = fmt[0].upper()
    prec_s = fmt[1:]
    if len(fmt) <= 3 and spec in "DXFNPEGCR" and (prec_s == "" or prec_s.isdigit()):
        prec = int(prec_s) if prec_s else None
        if spec == "D":
            if not is_integer(v):
                raise format_error("Format specifier was invalid.")
            s = str(abs(v)).rjust(prec or 0, "0")
            return ("-" if v < 0 else "") + s
        if spec == "X":
            if not is_integer(v):
                raise format_error("Format specifier was invalid.")
            n = v & (0xFFFFFFFFFFFFFFFF if isinstance(v, Long) else 0xFFFFFFFF) if v < 0 else v
            s = format(n, "X" if fmt[0] == "X" else "x")
            return s.rjust(prec or 0, "0")
        if spec == "R":
            return format_double(float(v)) if isinstance(v, float) else str(v)
        if spec == "G":
            if prec is None:
                return format_double(v) if isinstance(v, float) else str(v)
            return format(float(v), f".{prec}G").replace("E+0", "E+").replace("E-0", "E-")
        d = Decimal(str(v)) if isinstance(v, float) else Decimal(v)
        if spec == "E":
            p = 6 if prec is None else prec
            s = format(d, f".{p}E")
            mant, _, ex = s.partition("E")
            sign = "-" if ex.startswith("-") else "+"
            e = f"{mant}{fmt[0]}{sign}{abs(int(ex)):03d}"
            return e
        p = 2 if prec is None else prec
        if spec == "P":
            d = d * 100
        q = _round_half_away(d, p)
        neg = q < 0
        s = format(abs(q), f".{p}f")
        ip, _, fp = s.partition(".")
        if spec in ("N", "P", "C"):
            ip = _group(ip)
        body = ip + ("." + fp if fp else "")
        if spec == "P":
            body += " %"
        if spec == "C":
            body = "¤" + body
        return ("-" if neg and q != 0 else "") + body
    return _custom_number(v, fmt)


def _custom_number(v: Any, fmt: str) -> str:
    """Custom numeric formats built from ``0``, ``#``, ``.`` and ``,`` (the forms policies use)."""
    if not re.fullmatch(r"[#0,]*(\.[#0]*)?", fmt):
        raise format_error("Format specifier was invalid.")
    ip_fmt, _, fp_fmt = fmt.partition(".")
    d = Decimal(str(v)) if isinstance(v, float) else Decimal(v)
    places = len(fp_fmt)
    q = _round_half_away(d, places)
    s = format(abs(q), f".{places}f")
    ip, _, fp = s.partition(".")
    min_int = ip_fmt.replace(",", "").count("0")
    ip = ip.lstrip("0").rjust(min_int, "0")
    if "," in ip_fmt and ip:
        ip = _group(ip)
    min_frac = len(fp_fmt.rstrip("#"))
    fp = fp.rstrip("0").ljust(min_frac, "0") if fp else ""
    body = ip + ("." + fp if fp else "")
    return ("-" if q < 0 else "") + (body or "0")


# --- dates and times ----------------------------------------------------------------------------------------

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip

_STANDARD_DT = {
    "d": "MM/dd/yyyy",
    "D": "dddd, dd MMMM yyyy",
    "f": "dddd, dd MMMM yyyy HH:mm",
    "F": "dddd, dd MMMM yyyy HH:mm:ss",
    "g": "MM/dd/yyyy HH:mm",
    "G": "MM/dd/yyyy HH:mm:ss",
    "M": "MMMM dd",
    "m": "MMMM dd",
    "O": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
    "o": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
    "R": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
    "r": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
    "s": "yyyy'-'MM'-'dd'T'HH':'mm':'ss",
    "t": "HH:mm",
    "T": "HH:mm:ss",
    "u": "yyyy'-'MM'-'dd HH':'mm':'ss'Z'",
    "U": "dddd, dd MMMM yyyy HH:mm:ss",
    "Y": "yyyy MMMM",
    "y": "yyyy MMMM",
}

_DT_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\\.|%|d+|f+|F+|g+|h+|H+|K|m+|M+|s+|t+|y+|z+|.", re.S)


def _offset_text(off: timedelta | None, style: str) -> str:
    if off is None:
        return ""
    total = int(off.total_seconds() // 60)
    sign = "-" if total < 0 else "+"
    h, m = divmod(abs(total), 60)
    if style == "z":
        return f"{sign}{h}"
    if style == "zz":
        return f"{sign}{h:02d}"
    return f"{sign}{h:02d}:{m:02d}"


def _number_or_name(number: int, name: str, n: int) -> str:
    """``d``/``M`` … ``dddd``/``MMMM``: the day and the month share .NET's rule of number, two digits, short name
    (three letters) and full name."""
    if n == 1:
        return str(number)
    if n == 2:
        return f"{number:02d}"
    return name[:3] if n == 3 else name


def format_datetime(dt: datetime, fmt: str | None, offset_kind: bool = False) -> str:
    """``DateTime.ToString(format)`` with the invariant culture (the gateway's culture).

    ``offset_kind`` marks a DateTimeOffset, whose ``K``/``zzz`` always print the offset and whose ``R``/``u``
    convert to UTC.
    """
    if not fmt:
        fmt = "G"
        if offset_kind:
            return format_datetime(dt, "MM/dd/yyyy HH:mm:ss zzz", True)
    if len(fmt) == 1:
        if fmt not in _STANDARD_DT:
            raise format_error("Input string was not in a correct format.")
        if fmt in "RrUu" and dt.tzinfo is not None and (offset_kind or fmt in "U"):
            dt = dt.astimezone(UTC)
        if fmt == "U" and dt.tzinfo is None:
            pass
        fmt = _STANDARD_DT[fmt]
    out: list[str] = []
    for tok in _DT_TOKEN.findall(fmt):
        c = tok[0]
        n = len(tok)
        if c in "'\"":
            out.append(tok[1:-1])
        elif c == "\\":
            out.append(tok[1])
        elif c == "%":
            continue
        elif c == "d":
            out.append(_number_or_name(dt.day, _DAYS[dt.weekday()], n))
        elif c in "fF":
            frac = f"{dt.microsecond:06d}0"[: min(n, 7)]
            out.append(frac.rstrip("0") if c == "F" else frac)
            if c == "F" and not out[-1] and out and len(out) >= 2 and out[-2] == ".":
                out.pop(-2)
        elif c == "g":
            out.append("A.D.")
        elif c == "h":
            h = dt.hour % 12 or 12
            out.append(str(h) if n == 1 else f"{h:02d}")
        elif c == "H":
            out.append(str(dt.hour) if n == 1 else f"{dt.hour:02d}")
        elif c == "K":
            if offset_kind or (dt.tzinfo is not None and dt.utcoffset() != timedelta(0)):
                out.append(_offset_text(dt.utcoffset(), "zzz"))
            elif dt.tzinfo is not None:
                out.append("Z")
        elif c == "m":
            out.append(str(dt.minute) if n == 1 else f"{dt.minute:02d}")
        elif c == "M":
            out.append(_number_or_name(dt.month, _MONTHS[dt.month - 1], n))
        elif c == "s":
            out.append(str(dt.second) if n == 1 else f"{dt.second:02d}")
        elif c == "t":
            ampm = "AM" if dt.hour < 12 else "PM"
            out.append(ampm[0] if n == 1 else ampm)
        elif c == "y":
            out.append(
                str(dt.year % 100) if n == 1 else f"{dt.year % 100:02d}" if n == 2 else str(dt.year).rjust(n, "0")
            )
        elif c == "z":
            off = dt.utcoffset() if dt.tzinfo is not None else timedelta(0)
            out.append(_offset_text(off, tok[:3]))
        else:
            out.append(tok)
    return "".join(out)


def format_timespan(td: timedelta, fmt: str | None = None) -> str:
    """``TimeSpan.ToString()`` constant ("c") format: ``[-][d.]hh:mm:ss[.fffffff]``."""
    total_us = td // timedelta(microseconds=1)
    neg = total_us < 0
    total_us = abs(total_us)
    days, rem = divmod(total_us, 86_400_000_000)
    hours, rem = divmod(rem, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    seconds, us = divmod(rem, 1_000_000)
    if fmt and fmt not in ("c", "t", "T", "g", "G"):
        return _custom_timespan(days, hours, minutes, seconds, us, fmt)
    s = f"{'-' if neg else ''}{f'{days}.' if days else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
    if us:
        s += f".{us:06d}0"
    return s


def _custom_timespan(days: int, hours: int, minutes: int, seconds: int, us: int, fmt: str) -> str:
    out: list[str] = []
    for tok in _DT_TOKEN.findall(fmt):
        c, n = tok[0], len(tok)
        if c in "'\"":
            out.append(tok[1:-1])
        elif c == "\\":
            out.append(tok[1])
        elif c == "d":
            out.append(str(days).rjust(n, "0"))
        elif c == "h":
            out.append(str(hours).rjust(n, "0"))
        elif c == "m":
            out.append(str(minutes).rjust(n, "0"))
        elif c == "s":
            out.append(str(seconds).rjust(n, "0"))
        elif c in "fF":
            frac = f"{us:06d}0"[:n]
            out.append(frac.rstrip("0") if c == "F" else frac)
        else:
            raise format_error()
    return "".join(out)


def guid_text(g: UUID) -> str:
    """``str(g)`` (the "D" format), made from the integer's bytes in C: cheaper than ``UUID.__str__``'s slices and
    ``%`` format, which every ``context.RequestId.ToString()`` pays."""
    head, middle, tail = g.int.to_bytes(16).hex("-", 2).replace("-", "", 1).rsplit("-", 2)
    return head + middle + tail


def format_guid(g: UUID, fmt: str | None = None) -> str:
    if fmt is None:
        return guid_text(g)
    f = (fmt or "D").upper()
    if f == "N":
        return g.hex
    d = guid_text(g)
    if f == "D":
        return d
    if f == "B":
        return "{" + d + "}"
    if f == "P":
        return "(" + d + ")"
    raise format_error('Format string can be only "D", "d", "N", "n", "P", "p", "B", "b", "X" or "x".')


def parse_datetime(s: str) -> datetime:
    """``DateTime.Parse`` for ISO 8601, RFC 1123 and the invariant ``MM/dd/yyyy HH:mm:ss`` forms."""
    t = s.strip()
    try:
        iso = t.replace("Z", "+00:00") if t.endswith("Z") else t
        m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)", iso)
        if m:
            iso = f"{m.group(1)}.{(m.group(2) + '000000')[:6]}{m.group(3)}"
        dt = datetime.fromisoformat(iso)
        if dt.tzinfo is not None:
            # .NET converts offset-bearing text to local time; the gateway's local zone is UTC.
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        return dt
    except ValueError:
        pass
    for pattern in (
        "%a, %d %b %Y %H:%M:%S GMT",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y",
        "%m/%d/%Y %I:%M:%S %p",
        "%d %b %Y %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
        "%Y/%m/%d",
    ):
        try:
            dt = datetime.strptime(t, pattern)
            return dt.replace(tzinfo=UTC) if pattern.endswith("GMT") else dt
        except ValueError:
            continue
    raise format_error(f"String '{s}' was not recognized as a valid DateTime.")


def to_offset(dt: datetime) -> datetime:
    """A DateTimeOffset's aware datetime for a DateTime (unspecified kind is taken as UTC, the gateway's zone)."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)  # noqa: UP017
