"""``apim-mi validate`` for an APIM instance: what loads, what routes, what still needs a local value."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from ...policy.loader import effective_policy_xml
from .instance import Instance, env_name
from .routing import Gateway


def report(gateway: Gateway, *, effective: bool = False, out: Callable[[str], None] = print) -> tuple[int, int]:
    """Prints the instance; returns (errors, warnings)."""
    inst = gateway.instance
    ext = inst.extraction
    ops = sum(len(a.operations) for a in ext.apis.values())
    out(
        f"{ext.root}: APIOps extraction: {len(ext.apis)} API(s), {ops} operation(s), {len(ext.products)} "
        f"product(s), {len(inst.policies)} policy document(s) loaded, {len(inst.named)} named value(s), "
        f"{len(inst.backends)} backend(s), {len(inst.subscriptions)} subscription(s)"
    )
    out("gateway hosts (forward mode): " + ", ".join(gateway.hosts) + "; reverse mode answers every request")
    warnings = list(ext.warnings)
    for api in sorted(ext.apis.values(), key=lambda a: (a.path, a.version, a.name)):
        out("  " + _api_line(api))
        if api.spec != "openapi":
            warnings.append(
                f"{api.info}: API '{api.name}' has {'a ' + api.spec if api.spec else 'no'} "
                "specification: it routes by path alone, as one operation"
            )
        for op in api.operations:
            policy = " (policy)" if op.name in api.operation_policies else ""
            out(f"      {op.method:7} {op.url_template}  [{op.name}]{policy}")
            if effective:
                _effective(inst, api, op, out)
        if effective and not api.operations:
            _effective(inst, api, None, out)
    for p in ext.products.values():
        apis = ", ".join(sorted(p.apis)) or "no APIs"
        out(f'  product {p.name} "{p.display_name}" ({p.state}{", policy" if p.policy else ""}): {apis}')
    missing, vault = [], []
    for name, state in sorted(inst.named.items()):
        if state.origin == "key vault":
            vault.append(f"    {name}: {state.definition.key_vault}")
        elif state.origin == "missing":
            used = f"used at {state.used_at}" if state.used_at else "not used by any policy or backend"
            missing.append(f"    {name} ({used}): set named_values: {{{name}: …}} in the overrides or {env_name(name)}")
            if state.used_at:
                warnings.append(
                    f"{state.used_at}: named value '{name}' has no local value: the proxy will not start without one"
                )
    if vault:
        out("  named values from Key Vault (fetched at startup with the proxy's identity):")
        for line in vault:
            out(line)
    if missing:
        out("  named values missing a local value:")
        for line in missing:
            out(line)
    keyless = [s.name for s in inst.subscriptions.values() if not s.keys]
    if keyless:
        out(
            f"  subscriptions without a local key (give them under subscriptions: in the overrides): "
            f"{', '.join(keyless)}"
        )
    warnings += policy_warnings(inst)
    for e in inst.errors:
        out(f"error: {e}")
    for w in warnings:
        out(f"warning: {w}")
    return len(inst.errors), len(warnings)


def policy_warnings(inst: Instance) -> list[str]:
    """What the policy loader warns about (each document once) and the audience checks of ``apim-mi validate``."""
    from ...cli import audience_warnings

    found = list(dict.fromkeys(w for p in inst.policies.values() for w in p.warnings))
    root = inst.extraction.root
    documents = [SimpleNamespace(name=str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
                                 policy=policy) for path, policy in inst.policies.items()]  # fmt: skip
    return found + audience_warnings(SimpleNamespace(rules=documents))


def _api_line(api: object) -> str:
    from .model import ApiDef

    assert isinstance(api, ApiDef)
    version = ""
    if api.version_set is not None and api.version:
        vs = api.version_set
        where = {"segment": f"/{api.version}", "query": f"?{vs.query_name}={api.version}",
                 "header": f"{vs.header_name}: {api.version}"}.get(vs.scheme.lower(), api.version)  # fmt: skip
        version = f", version {api.version} ({vs.scheme}: {where})"
    rev = "" if api.is_current else f", revision {api.revision} (/{api.path};rev={api.revision})"
    sub = "subscription required" if api.subscription_required else "open"
    backend = api.service_url or "no serviceUrl (the policy sets the backend)"
    return (
        f'{api.name} "{api.display_name}": /{api.path}{version}{rev} -> {backend} ({sub}; '
        f"{len(api.operations)} operation(s), spec: {api.spec or 'none'})"
    )


def _effective(inst: Instance, api: object, op: object, out: Callable[[str], None]) -> None:
    from .model import ApiDef, OperationDef

    assert isinstance(api, ApiDef) and (op is None or isinstance(op, OperationDef))
    products = [p for p in inst.extraction.products.values()
                if p.policy and (api.name in p.apis or api.root_name in p.apis)]  # fmt: skip
    for product in [None, *products]:
        label = "without a product" if product is None else f"with a subscription to product '{product.name}'"
        out(f"        effective policy {label}:")
        xml = effective_policy_xml(inst.composed(api, op, product))
        out("          " + xml.rstrip("\n").replace("\n", "\n          "))
