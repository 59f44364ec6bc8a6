"""An API's ``specification.*`` → its operations (method + URL template), as APIM imported them.

APIM exports an API's operations as OpenAPI 2/3 ``paths``: each path key is the operation's URL template relative to
the API path, ``operationId`` is the operation's resource name (the folder under ``operations/``) and ``summary`` its
display name. A template may carry a query part (``/search?q={q}``); its parameters are required for a match.
WSDL, WADL and GraphQL APIs have no URL templates: they route by path alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ...errors import LoadError, Location
from .model import OperationDef

SPEC_FILES: tuple[tuple[str, str], ...] = (
    ("specification.yaml", "openapi"),
    ("specification.yml", "openapi"),
    ("specification.json", "openapi"),
    ("specification.wsdl", "wsdl"),
    ("specification.wadl", "wadl"),
    ("specification.graphql", "graphql"),
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"[^A-Za-z0-9]+")


def find_spec(api_dir: Path) -> tuple[Path | None, str]:
    """The specification file of an API folder and its kind ("" when there is none)."""
    for name, kind in SPEC_FILES:
        path = api_dir / name
        if path.is_file():
            return path, kind
    return None, ""


def read_document(path: Path) -> Any:
    """A JSON or YAML document; syntax errors become a located ``LoadError``."""
    text = path.read_text("utf-8-sig")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LoadError(Location(str(path), e.lineno, e.colno), f"invalid JSON: {e.msg}") from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Location(str(path), mark.line + 1, mark.column + 1) if mark else Location(str(path), 1, 1)
        raise LoadError(loc, f"YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise LoadError(Location(str(path), 1, 1), f"YAML error: {e}") from None


def operations(path: Path) -> list[OperationDef]:
    """Every operation an OpenAPI 2/3 document declares, in document order."""
    doc = read_document(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise LoadError(Location(str(path), 1, 1), "not an OpenAPI document: no 'paths' mapping")
    loc = Location(str(path))
    out: list[OperationDef] = []
    for template, item in doc["paths"].items():
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            name = str(op.get("operationId") or f"{method}-{_NAME.sub('-', str(template)).strip('-')}")
            display = str(op.get("summary") or name)
            out.append(OperationDef(name, method.upper(), str(template), display, loc))
    return out
