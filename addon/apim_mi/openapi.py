"""The API definition a rule names (``openapi:``): an OpenAPI 3 document, as the validation policies and
mock-response read it. APIM validates against the API's imported schema; apim-mi has no API import, so the rule
points at the document instead.

``ApiDefinition.operation(method, path)`` finds the operation a request addresses (path templates, with or without
the first server URL's base path) and its path parameters; schemas keep their ``$ref``s and are validated with
jsonschema against the whole document, so ``#/components/schemas/…`` resolve as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class DefinitionError(ValueError):
    """An API definition that cannot be read or is not OpenAPI 3."""


@dataclass
class Parameter:
    name: str
    location: str  # path | query | header | cookie
    required: bool
    schema: dict[str, Any]
    style_explode: bool = True


@dataclass
class Operation:
    """One operation: its parameters, request body content and responses (with their ``$ref``s unresolved)."""

    method: str
    template: str
    operation_id: str
    parameters: list[Parameter]
    request_content: dict[str, Any]
    responses: dict[str, Any]

    def response(self, status: int) -> tuple[str, dict[str, Any]] | None:
        """The response object for a status code: exact, then ``2XX``-style ranges, then ``default``."""
        for key in (str(status), f"{str(status)[0]}XX", f"{str(status)[0]}xx", "default"):
            if key in self.responses:
                return key, self.responses[key]
        return None


@dataclass
class ApiDefinition:
    document: dict[str, Any]
    source: str
    base_paths: tuple[str, ...] = ()
    _routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = field(default_factory=list, repr=False)

    def resolve(self, node: Any) -> Any:
        """A node with its own ``$ref`` (local, ``#/…``) followed; nested refs stay for jsonschema."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
            node = self.pointer(node["$ref"])
            seen += 1
        return node

    def pointer(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise DefinitionError(f"only local references are supported ({ref})")
        node: Any = self.document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise DefinitionError(f"{ref} does not resolve")
            node = node[part]
        return node

    def operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        candidates = [path] + [path[len(b):] or "/" for b in self.base_paths if b and path.startswith(b)]
        for candidate in candidates:
            for pattern, template, item in self._routes:
                m = pattern.fullmatch(candidate)
                op = item.get(method.lower()) if m else None
                if m and isinstance(op, dict):
                    params = {k: unquote(v) for k, v in m.groupdict().items()}
                    names = {f"p{i}": n for i, n in enumerate(re.findall(r"\{([^}]+)\}", template))}
                    return self._operation(method, template, item, op), {names[k]: v for k, v in params.items()}
        return None

    def _operation(self, method: str, template: str, item: dict[str, Any], op: dict[str, Any]) -> Operation:
        merged: dict[tuple[str, str], Parameter] = {}
        for raw in [*item.get("parameters", []), *op.get("parameters", [])]:
            p = self.resolve(raw)
            if not isinstance(p, dict) or "name" not in p or "in" not in p:
                continue
            merged[(p["in"], p["name"].lower())] = Parameter(
                p["name"], p["in"], bool(p.get("required", p["in"] == "path")), p.get("schema") or {},
                bool(p.get("explode", True)),
            )  # fmt: skip
        body = self.resolve(op.get("requestBody") or {})
        responses = {str(k): self.resolve(v) for k, v in (op.get("responses") or {}).items()}
        return Operation(method.upper(), template, str(op.get("operationId", "")), list(merged.values()),
                         dict(body.get("content") or {}), responses)  # fmt: skip


def _route(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    out, index = [], 0
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            out.append(f"(?P<p{index}>[^/]+)")
            index += 1
        else:
            out.append(re.escape(part))
    return re.compile("".join(out).rstrip("/") + "/?")


def _rebase_refs(node: Any) -> Any:
    """``#/components/…`` → ``urn:api#/components/…`` so a validator for a sub-schema resolves them."""
    if isinstance(node, dict):
        return {k: ("urn:api" + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase_refs(v))
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [_rebase_refs(v) for v in node]
    return node


def parse_definition(document: Any, source: str) -> ApiDefinition:
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3"):
        raise DefinitionError("not an OpenAPI 3 document (no 'openapi: 3.x' at the top)")
    base_paths = []
    for server in document.get("servers") or []:
        path = urlsplit(str(server.get("url", ""))).path.rstrip("/")
        if path:
            base_paths.append(path)
    definition = ApiDefinition(document, source, tuple(base_paths))
    for template, item in (document.get("paths") or {}).items():
        if isinstance(item, dict):
            definition._routes.append((_route(str(template)), str(template), item))
    # literal paths before templated ones, as APIM matches /orders/mine before /orders/{id}
    definition._routes.sort(key=lambda r: r[1].count("{"))
    return definition


def load_definition(path: Path) -> ApiDefinition:
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise DefinitionError(f"cannot read {path}: {e.strerror}") from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise DefinitionError(f"{path.name} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_definition(document, str(path))


def schema_validator(definition: ApiDefinition, schema: dict[str, Any]) -> Any:
    """A jsonschema validator for a schema of the document (its ``$ref``s resolve against the whole document)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry: Registry[Any] = Registry().with_resource(
        "urn:api", Resource.from_contents(definition.document, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(_rebase_refs(schema), registry=registry)


def definition_name(schema: Any) -> str:
    """The component name a schema refers to (``#/components/schemas/Order`` → ``Order``), else ``body``."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        return schema["$ref"].rsplit("/", 1)[-1]
    return "body"
