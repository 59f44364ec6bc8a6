"""Liquid for ``set-body template="liquid"`` on python-liquid, shaped like APIM's DotLiquid setup.

APIM's objects: ``body`` (the message body, JSON or XML) and ``context`` with .NET member names
(``context.Request.Headers["Accept"]``, ``context.Request.MatchedParameters["id"]``, ``context.Variables["x"]``,
``context.Response.StatusCode`` …). Dictionaries iterate as DotLiquid's ``KeyValuePair`` (``item.Key``,
``item.Value``); filters answer to DotLiquid's C# names (``Upcase``, ``AtLeast``) as well as Liquid's; APIM's
``{% JSONArrayFor x in list %}`` tag renders a comma-separated JSON array.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from ..context import Context, MultiMap, Url

_JSON_ARRAY_FOR = re.compile(r"\{%-?\s*JSONArrayFor\s+(.*?)-?%\}(.*?)\{%-?\s*endJSONArrayFor\s*-?%\}", re.S)
#: Liquid's names whose C# (DotLiquid) spelling is not simply the PascalCase of the name.
_CSHARP_NAMES = {"truncatewords": "TruncateWords", "newline_to_br": "NewlineToBr", "escape": "H"}


class LiquidError(Exception):
    """A template that does not parse or fails while rendering."""


class KeyValue(Mapping[Any, Any]):
    """.NET's ``KeyValuePair``: ``pair.Key`` / ``pair.Value`` (and Liquid's ``pair[0]`` / ``pair[1]``)."""

    def __init__(self, key: str, value: Any) -> None:
        self._items = {"Key": key, "Value": value}

    def __getitem__(self, name: Any) -> Any:
        if name in (0, 1):
            return self._items["Key" if name == 0 else "Value"]
        return self._items[name]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return 2

    def __str__(self) -> str:
        return f"[{self._items['Key']}, {self._items['Value']}]"


class NetDict(Mapping[str, Any]):
    """A .NET dictionary for Liquid: case-insensitive lookup (headers, query), iteration as ``KeyValue`` pairs."""

    def __init__(self, items: dict[str, Any], text: str | None = None, *, case_insensitive: bool = True) -> None:
        self._items = items
        self._folded = {k.lower(): v for k, v in items.items()} if case_insensitive else None
        self._text = text

    def __getitem__(self, name: str) -> Any:
        if name in self._items:
            return self._items[name]
        if self._folded is not None and isinstance(name, str) and name.lower() in self._folded:
            return self._folded[name.lower()]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[KeyValue]:  # type: ignore[override]
        return [KeyValue(k, v) for k, v in self._items.items()]

    def __str__(self) -> str:
        return self._text if self._text is not None else json.dumps(_plain(self._items), default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _multimap(values: MultiMap) -> NetDict:
    return NetDict({name: ",".join(values.get_all(name)) for name in values.names()})


def _url(url: Url) -> NetDict:
    items = {"Scheme": url.scheme, "Host": url.host, "Port": url.port, "Path": url.path,
             "Query": _multimap(url.query), "QueryString": url.query_string}  # fmt: skip
    return NetDict(items, str(url), case_insensitive=False)


def net_value(value: Any) -> Any:
    """A context member as Liquid sees it: dataclasses with their .NET member names, collections as NetDict."""
    from ..expressions.jsonlinq import JToken

    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Url):
        return _url(value)
    if isinstance(value, MultiMap):
        return _multimap(value)
    if isinstance(value, JToken):
        return json.loads(value.to_json(False))
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, dict):
        return NetDict({str(k): net_value(v) for k, v in value.items()}, case_insensitive=False)
    if isinstance(value, list | tuple):
        return [net_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {_pascal(f.name): net_value(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if not f.name.startswith("_")}  # fmt: skip
        return NetDict(fields, case_insensitive=False)
    return str(value)


def context_object(context: Context) -> NetDict:
    """``context`` for Liquid (apim.md §4.2's members; only what a template can print)."""
    request = context.request
    req = {
        "Url": _url(request.url), "Method": request.method,
        "OriginalMethod": request.method, "OriginalUrl": _url(request.original_url or request.url),
        "IpAddress": request.ip_address, "MatchedParameters": NetDict(dict(request.matched_parameters)),
        "HasBody": bool(request.body is not None and request.body.content), "Headers": _multimap(request.headers),
        "ClientCertificates": [],
    }  # fmt: skip
    members: dict[str, Any] = {
        "Request": NetDict(req, case_insensitive=False),
        "Variables": net_value(context.variables),
        "RequestId": str(context.request_id),
        "Timestamp": net_value(context.timestamp),
        "Elapsed": net_value(context.elapsed),
        "Deployment": net_value(context.deployment),
    }
    response = context.response
    if response is not None:
        members["Response"] = NetDict({"StatusCode": response.status_code, "StatusReason": response.status_reason,
                                       "Headers": _multimap(response.headers)}, case_insensitive=False)
    for name in ("api", "operation", "product", "subscription", "user", "workspace", "last_error"):
        value = getattr(context, name)
        if value is not None:
            members[_pascal(name)] = net_value(value)
    return NetDict(members, case_insensitive=False)


@lru_cache(maxsize=1)
def _environment() -> Any:
    from liquid import Environment

    env = Environment()
    for name, func in list(env.filters.items()):
        env.add_filter(_CSHARP_NAMES.get(name, _pascal(name)), func)
    env.add_filter("Escape", env.filters["escape"])
    return env


def _rewrite(template: str) -> str:
    """APIM's ``JSONArrayFor`` as a plain ``for`` between brackets, with commas between the items."""

    def repl(m: re.Match[str]) -> str:
        return (f"[{{% for {m.group(1).strip()} %}}{m.group(2)}{{% unless forloop.last %}},{{% endunless %}}"
                "{% endfor %}]")

    return _JSON_ARRAY_FOR.sub(repl, template)


@lru_cache(maxsize=256)
def _compiled(template: str) -> Any:
    from liquid.exceptions import LiquidError as _Error

    try:
        return _environment().from_string(_rewrite(template))
    except _Error as e:
        raise LiquidError(str(e)) from None


def render(template: str, **objects: Any) -> bytes:
    """The rendered body; raises LiquidError."""
    from liquid.exceptions import LiquidError as _Error

    compiled = _compiled(template)
    try:
        return compiled.render(**objects).encode()
    except _Error as e:
        raise LiquidError(str(e)) from None
