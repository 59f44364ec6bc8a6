"""Local values for an extraction: what Azure keeps to itself (secrets, subscription keys) and where things run here.

An overrides mapping (a file, or the ``apim:`` mapping of a rules file) may hold::

    overrides: local.yaml                    # more overrides files (either format), applied first
    configuration: configuration.dev.yaml    # an APIOps configuration.<env>.yaml, applied first
    gateway_hosts: [api.contoso.com]         # forward mode: hosts answered besides *.azure-api.net
    named_values: {name: value}              # by resource name or display name; wins over everything
    backends: {name: url | {url: …, credentials: …}}
    apis: {name: {serviceUrl: url}}
    subscriptions: {name: key | {keys: [k1, k2], scope: all | api/<name> | product/<name>}}
    key_vault:                               # Key Vault-backed named values
      url: http://127.0.0.1:8200             # fetch every vault's secrets here instead (a local stand-in)
      vaults: {contoso-kv.vault.azure.net: http://127.0.0.1:8200}   # or per vault
      refresh: 14400                         # seconds between refreshes (APIM: every 4 hours)

An APIOps ``configuration.<env>.yaml`` (``namedValues:``, ``backends:``, ``apis:`` lists of ``{name, properties}``)
is accepted as it is, as a file of its own; its ``{#token#}`` placeholders (filled by a pipeline) count as no value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import LoadError, Location

KEYS = ("overrides", "configuration", "gateway_hosts", "named_values", "backends", "apis", "subscriptions", "key_vault")
_APIOPS_KEYS = ("namedValues", "backends", "apis", "apimServiceName", "loggers", "diagnostics", "products")
_TOKEN = re.compile(r"\{#[^#]*#\}")


@dataclass
class Overrides:
    named_values: dict[str, str] = field(default_factory=dict)
    named_value_properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    apis: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    gateway_hosts: list[str] = field(default_factory=list)
    key_vault: dict[str, str] = field(default_factory=dict)  # vault host (or "*") → base URL to fetch from
    key_vault_refresh: float = 4 * 3600.0
    files: list[Path] = field(default_factory=list)


def is_placeholder(value: str) -> bool:
    """A pipeline token (``{#name#}``) that nobody filled in."""
    return bool(_TOKEN.search(value))


def load_file(path: Path, into: Overrides | None = None) -> Overrides:
    """An overrides file: apim-mi's format or an APIOps ``configuration.<env>.yaml``."""
    from ...rules import _parse_yaml

    out = into if into is not None else Overrides()
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise LoadError(Location(str(path)), f"cannot read overrides file: {e.strerror or e}") from None
    data, pos = _parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise LoadError(pos.at(()), "an overrides file must be a mapping")
    out.files.append(path.resolve())
    if any(k in data for k in _APIOPS_KEYS) and not any(k in data for k in ("named_values", "gateway_hosts")):
        _apiops_configuration(data, out)
        return out
    return apply_mapping(data, path.parent, lambda p: pos.at(p, key=True), out)


def apply_mapping(data: dict[str, Any], base_dir: Path, at: Any, out: Overrides) -> Overrides:
    """apim-mi's overrides format (also the ``apim:`` mapping of a rules file). ``at(path)`` locates a key."""
    for key in data:
        if key not in KEYS and key != "extraction":
            raise LoadError(at((key,)), f"unknown overrides field '{key}' (allowed: {', '.join(KEYS)})")
    for key in ("configuration", "overrides"):
        for f in _list(data, key, at):
            path = (base_dir / str(f)).resolve()
            if not path.is_file():
                raise LoadError(at((key,)), f"{key} file '{f}' not found (looked for {path})")
            load_file(path, out)
    out.gateway_hosts += [str(h).lower() for h in _list(data, "gateway_hosts", at)]
    out.named_values.update({str(k): str(v) for k, v in _map(data, "named_values", at).items()})
    for name, value in _map(data, "backends", at).items():
        out.backends[str(name)] = {
            **out.backends.get(str(name), {}),
            **(value if isinstance(value, dict) else {"url": str(value)}),
        }
    for name, value in _map(data, "apis", at).items():
        if not isinstance(value, dict):
            raise LoadError(at(("apis", name)), f"apis.{name}: expected a mapping such as {{serviceUrl: …}}")
        props = {("serviceUrl" if k == "service_url" else str(k)): v for k, v in value.items()}
        out.apis[str(name)] = {**out.apis.get(str(name), {}), **props}
    for name, value in _map(data, "subscriptions", at).items():
        out.subscriptions[str(name)] = _subscription(value, at(("subscriptions", name)))
    kv = _map(data, "key_vault", at)
    for key in kv:
        if key not in ("url", "vaults", "refresh"):
            raise LoadError(at(("key_vault", key)), f"unknown key_vault field '{key}' (allowed: url, vaults, refresh)")
    if "url" in kv:
        out.key_vault["*"] = str(kv["url"])
    out.key_vault.update(
        {str(k).lower(): str(v) for k, v in _map(kv, "vaults", lambda p: at(("key_vault", *p))).items()}
    )
    if "refresh" in kv:
        if not isinstance(kv["refresh"], int | float) or kv["refresh"] <= 0:
            raise LoadError(at(("key_vault", "refresh")), "key_vault.refresh: a positive number of seconds")
        out.key_vault_refresh = float(kv["refresh"])
    return out


def _map(data: dict[str, Any], key: str, at: Any) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise LoadError(at((key,)), f"'{key}' must be a mapping")
    return value


def _list(data: dict[str, Any], key: str, at: Any) -> list[Any]:
    value = data.get(key) or []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise LoadError(at((key,)), f"'{key}' must be a list")
    return value


def _subscription(value: Any, loc: Location) -> dict[str, Any]:
    if isinstance(value, str | int):
        return {"keys": [str(value)]}
    if not isinstance(value, dict):
        raise LoadError(loc, "a subscription is a key, or a mapping with key/keys and an optional scope")
    keys = [str(k) for k in (value.get("keys") or [])] + ([str(value["key"])] if "key" in value else [])
    if not keys:
        raise LoadError(loc, "a subscription needs 'key' or 'keys'")
    out: dict[str, Any] = {"keys": keys}
    if "scope" in value:
        scope = str(value["scope"]).strip("/")
        kind, _, name = scope.partition("/")
        if kind not in ("all", "api", "apis", "product", "products") or (kind != "all" and not name):
            raise LoadError(loc, f"subscription scope '{value['scope']}': use all, api/<name> or product/<name>")
        out["scope"] = ("all", "") if kind == "all" else (kind.rstrip("s"), name)
    return out


def _apiops_configuration(data: dict[str, Any], out: Overrides) -> None:
    """APIOps' own overrides: lists of ``{name, properties}`` merged over the extracted resources."""
    for item in data.get("namedValues") or []:
        if isinstance(item, dict) and item.get("name"):
            props = dict(item.get("properties") or {})
            if isinstance(props.get("value"), str) and is_placeholder(props["value"]):
                del props["value"]
            out.named_value_properties[str(item["name"])] = props
    for item in data.get("backends") or []:
        if isinstance(item, dict) and item.get("name"):
            name = str(item["name"])
            out.backends[name] = {**out.backends.get(name, {}), **(item.get("properties") or {})}
    for item in data.get("apis") or []:
        if isinstance(item, dict) and item.get("name"):
            name = str(item["name"])
            out.apis[name] = {**out.apis.get(name, {}), **(item.get("properties") or {})}
