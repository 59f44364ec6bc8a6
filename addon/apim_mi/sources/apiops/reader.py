"""Reads an APIOps extraction folder (Azure/apiops' extractor layout) into an ``Extraction``.

The layout (``apimartifacts/``)::

    policy.xml                                   global scope
    apis/<api>/apiInformation.json               path, serviceUrl, protocols, subscription settings, version set
    apis/<api>/specification.{yaml,json,wsdl…}   operations and their URL templates
    apis/<api>/policy.xml, operations/<op>/policy.xml
    products/<p>/productInformation.json, policy.xml, apis.json | apis/<api>/productApiInformation.json
    named values/<nv>/namedValueInformation.json
    backends/<b>/backendInformation.json
    subscriptions/<s>/subscriptionInformation.json
    version sets/<v>/versionSetInformation.json
    policy fragments/<f>/policy.xml
    workspaces/<ws>/…                            the same layout again, one scope further in

Anything unreadable is a ``LoadError`` naming its file (JSON errors with line and column); what is merely odd (a
product linking an API that is not there) becomes a warning for ``apim-mi validate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import LoadError, Location
from . import openapi
from .model import (
    ApiDef,
    BackendDef,
    Extraction,
    NamedValueDef,
    ProductDef,
    SubscriptionDef,
    VersionSet,
)

ARTIFACTS = "apimartifacts"
_SERVICE_ID = re.compile(
    r"/subscriptions/[^/\"]+/resourceGroups/[^/\"]+/providers/Microsoft\.ApiManagement/service/"
    r"[^/\"]+",
    re.IGNORECASE,
)


def extraction_root(path: Path) -> Path:
    """The folder holding the artifacts: ``path`` itself, or its ``apimartifacts/``."""
    inner = path / ARTIFACTS
    return inner if inner.is_dir() and not (path / "apis").is_dir() else path


def is_extraction(path: Path) -> bool:
    root = extraction_root(path)
    return root.is_dir() and any((root / d).is_dir() for d in ("apis", "products", "workspaces", "named values"))


def read_extraction(path: Path) -> Extraction:
    root = extraction_root(Path(path))
    if not root.is_dir():
        raise LoadError(Location(str(path)), "APIOps extraction folder not found")
    if not is_extraction(root):
        raise LoadError(Location(str(path)), "not an APIOps extraction (no apis/, products/ or workspaces/ folder)")
    ext = Extraction(root=root)
    _read_scope(ext, root, "")
    _check_links(ext)
    return ext


def _read_scope(ext: Extraction, root: Path, workspace: str) -> None:
    policy = root / "policy.xml"
    if policy.is_file():
        if workspace:
            ext.workspace_policies[workspace] = policy
        else:
            ext.global_policy = policy
        ext.files.append(policy)
    for path, info in _infos(root, "version sets", "versionSetInformation.json", ext):
        vs = VersionSet(
            path.name,
            str(info.get("displayName") or path.name),
            str(info.get("versioningScheme") or "Segment"),
            str(info.get("versionQueryName") or ""),
            str(info.get("versionHeaderName") or ""),
        )
        ext.version_sets[path.name] = vs
    for path, info in _infos(root, "named values", "namedValueInformation.json", ext):
        kv = info.get("keyVault") or {}
        ext.named_values[path.name] = NamedValueDef(
            name=path.name,
            display_name=str(info.get("displayName") or path.name),
            info=Location(str(path / "namedValueInformation.json")),
            value=None if info.get("value") is None else str(info["value"]),
            secret=bool(info.get("secret", False)),
            key_vault=str(kv.get("secretIdentifier") or "") if isinstance(kv, dict) else "",
            identity_client_id=str(kv.get("identityClientId") or "") if isinstance(kv, dict) else "",
        )
    for path, info in _infos(root, "backends", "backendInformation.json", ext):
        ext.backends[path.name] = backend_def(path.name, info, Location(str(path / "backendInformation.json")))
    for path, _info in _infos(root, "policy fragments", "policyFragmentInformation.json", ext, required=False):
        if (path / "policy.xml").is_file():
            ext.fragments[path.name] = path / "policy.xml"
            ext.files.append(path / "policy.xml")
    for path, info in _infos(root, "apis", "apiInformation.json", ext):
        api = _api(path, info, ext, workspace)
        if api.name in ext.apis:
            ext.warnings.append(f"{api.info}: API '{api.name}' is defined twice; the later one is ignored")
            continue
        ext.apis[api.name] = api
    for path, info in _infos(root, "products", "productInformation.json", ext):
        ext.products[path.name] = _product(path, info, ext, workspace)
    for path, info in _infos(root, "subscriptions", "subscriptionInformation.json", ext):
        ext.subscriptions[path.name] = SubscriptionDef(
            name=path.name,
            display_name=str(info.get("displayName") or path.name),
            scope=subscription_scope(str(info.get("scope") or "/apis")),
            info=Location(str(path / "subscriptionInformation.json")),
            state=str(info.get("state") or "active"),
            allow_tracing=bool(info.get("allowTracing", False)),
        )
    workspaces = root / "workspaces"
    if not workspace and workspaces.is_dir():
        for ws in sorted(p for p in workspaces.iterdir() if p.is_dir()):
            _read_scope(ext, ws, ws.name)


def _infos(
    root: Path, collection: str, file: str, ext: Extraction, *, required: bool = True
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(folder, ``properties``) of every resource in a collection folder, in name order."""
    folder = root / collection
    if not folder.is_dir():
        return
    ext.files.append(folder)  # hot reload notices an added or removed resource by the folder's mtime
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        info_file = path / file
        if not info_file.is_file():
            if required:
                ext.warnings.append(f"{path}: no {file}; ignored")
            else:
                yield path, {}
            continue
        ext.files.append(info_file)
        props = properties(info_file)
        if not ext.service_id:
            m = _SERVICE_ID.search(json.dumps(props))
            ext.service_id = m.group(0) if m else ""
        yield path, props


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise LoadError(Location(str(path), e.lineno, e.colno), f"invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(Location(str(path)), f"cannot read: {e}") from None


def properties(path: Path) -> dict[str, Any]:
    data = read_json(path)
    props = data.get("properties", data) if isinstance(data, dict) else None
    if not isinstance(props, dict):
        raise LoadError(Location(str(path), 1, 1), "expected a JSON object with 'properties'")
    return props


def _last(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def subscription_scope(scope: str) -> tuple[str, str]:
    """An ARM scope id → ("all", ""), ("api", name) or ("product", name)."""
    parts = [p for p in scope.split("/") if p]
    if len(parts) >= 2 and parts[-2].lower() in ("apis", "products"):
        return ("api" if parts[-2].lower() == "apis" else "product", parts[-1])
    return ("all", "")


def _api(path: Path, info: dict[str, Any], ext: Extraction, workspace: str) -> ApiDef:
    loc = Location(str(path / "apiInformation.json"))
    keys = info.get("subscriptionKeyParameterNames") or {}
    vs_id = str(info.get("apiVersionSetId") or "")
    version_set = None
    if vs_id:
        version_set = ext.version_sets.get(_last(vs_id))
        if version_set is None:
            inline = info.get("apiVersionSet") or {}
            if inline:
                version_set = VersionSet(
                    _last(vs_id),
                    str(inline.get("name") or _last(vs_id)),
                    str(inline.get("versioningScheme") or "Segment"),
                    str(inline.get("versionQueryName") or ""),
                    str(inline.get("versionHeaderName") or ""),
                )
            else:
                ext.warnings.append(f"{loc}: version set '{_last(vs_id)}' not found; routed as an unversioned API")
    api = ApiDef(
        name=path.name,
        display_name=str(info.get("displayName") or path.name),
        path=str(info.get("path") or "").strip("/"),
        service_url=str(info.get("serviceUrl") or ""),
        info=loc,
        protocols=tuple(str(p).lower() for p in info.get("protocols") or ("https",)),
        subscription_required=bool(info.get("subscriptionRequired", True)),
        key_header=str(keys.get("header") or "Ocp-Apim-Subscription-Key"),
        key_query=str(keys.get("query") or "subscription-key"),
        version=str(info.get("apiVersion") or ""),
        version_set=version_set,
        revision=str(info.get("apiRevision") or "1"),
        is_current=bool(info.get("isCurrent", ";rev=" not in path.name)),
        api_type=str(info.get("type") or info.get("apiType") or "http").lower(),
        workspace=workspace,
    )
    spec, kind = openapi.find_spec(path)
    api.spec = kind
    if spec is not None:
        ext.files.append(spec)
        if kind == "openapi":
            api.operations = openapi.operations(spec)
    if api.policy is None and (path / "policy.xml").is_file():
        api.policy = path / "policy.xml"
        ext.files.append(api.policy)
    ops = path / "operations"
    if ops.is_dir():
        known = {op.name for op in api.operations}
        for op_dir in sorted(p for p in ops.iterdir() if p.is_dir()):
            policy = op_dir / "policy.xml"
            if not policy.is_file():
                continue
            ext.files.append(policy)
            api.operation_policies[op_dir.name] = policy
            if op_dir.name not in known:
                ext.warnings.append(
                    f"{policy}: operation '{op_dir.name}' is not in the API's specification; its policy never runs"
                )
    return api


def _product(path: Path, info: dict[str, Any], ext: Extraction, workspace: str) -> ProductDef:
    limit = info.get("subscriptionsLimit")
    product = ProductDef(
        name=path.name,
        display_name=str(info.get("displayName") or path.name),
        info=Location(str(path / "productInformation.json")),
        state=str(info.get("state") or "notPublished"),
        subscription_required=bool(info.get("subscriptionRequired", True)),
        approval_required=bool(info.get("approvalRequired", False)),
        subscriptions_limit=int(limit) if isinstance(limit, int) else None,
        workspace=workspace,
    )
    if (path / "policy.xml").is_file():
        product.policy = path / "policy.xml"
        ext.files.append(product.policy)
    listing = path / "apis.json"
    if listing.is_file():
        ext.files.append(listing)
        data = read_json(listing)
        if not isinstance(data, list):
            raise LoadError(Location(str(listing), 1, 1), 'expected a JSON list of {"name": api}')
        product.apis.update(str(item.get("name")) for item in data if isinstance(item, dict) and item.get("name"))
    links = path / "apis"
    if links.is_dir():
        product.apis.update(p.name for p in links.iterdir() if p.is_dir())
    return product


def backend_def(name: str, info: dict[str, Any], loc: Location) -> BackendDef:
    return BackendDef(name=name, info=loc, properties=dict(info))


def _check_links(ext: Extraction) -> None:
    for product in ext.products.values():
        for api in sorted(product.apis):
            if api not in ext.apis:
                ext.warnings.append(
                    f"{product.info}: product '{product.name}' links API '{api}', which is not in the extraction"
                )
    for sub in ext.subscriptions.values():
        kind, name = sub.scope
        if (kind == "api" and name not in ext.apis) or (kind == "product" and name not in ext.products):
            ext.warnings.append(
                f"{sub.info}: subscription '{sub.name}' is scoped to {kind} '{name}', which is not in the extraction"
            )
    for backend in ext.backends.values():
        for member in backend.members:
            if member not in ext.backends:
                ext.warnings.append(f"{backend.info}: pool member '{member}' is not in the extraction")
