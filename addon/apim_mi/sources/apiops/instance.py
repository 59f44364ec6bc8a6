"""An extraction made runnable: overrides applied, named values resolved, every policy compiled, scopes composed.

Named values (policies name them by display name) resolve in this order: the overrides' ``named_values`` (by name
or display name), an APIOps configuration's value, the environment variable ``APIM_NAMED_VALUE_<DISPLAY_NAME>``
(upper case, other characters as ``_``), the extracted value. Key Vault-backed ones left over are fetched at startup
with the proxy's identity (``keyvault.py``); a secret with no value anywhere is an error only when something uses
it, and the error names it and where it is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...backends import Backend, BackendError, check_pools, parse_backend
from ...errors import LoadError, Location
from ...policy import loader
from ...policy.model import Policy
from ...rules import MatchSpec, Rule
from .model import ApiDef, BackendDef, Extraction, NamedValueDef, OperationDef, ProductDef, SubscriptionDef
from .overrides import Overrides, is_placeholder

ENV_PREFIX = "APIM_NAMED_VALUE_"
_REFERENCE = re.compile(r"\{\{([^{}]+)\}\}")
#: Stands in for a Key Vault secret until it is fetched (validate never fetches).
KEY_VAULT_PLACEHOLDER = "key-vault-secret-not-fetched"
#: Stands in for a missing value while ``apim-mi validate`` checks the rest of a policy.
MISSING_PLACEHOLDER = "named-value-without-local-value"


def env_name(display_name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", display_name).upper()


@dataclass
class NamedValueState:
    """Where a named value's local value comes from: "override", "configuration", "environment", "extracted",
    "key vault" (to fetch) or "missing"."""

    definition: NamedValueDef
    origin: str
    value: str | None = None
    used_at: Location | None = None


@dataclass
class Instance:
    """Everything the gateway needs; ``policies`` maps each policy file to its compiled ``Policy``."""

    extraction: Extraction
    overrides: Overrides
    named: dict[str, NamedValueState] = field(default_factory=dict)
    policies: dict[Path, Policy] = field(default_factory=dict)
    backends: dict[str, BackendDef] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionDef] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)
    #: The published backend entities (``RulesConfig.backends`` is this very dict); ``shadowed`` ones belong to
    #: the rules file and are never replaced.
    targets: dict[str, Backend] = field(default_factory=dict)
    shadowed: set[str] = field(default_factory=set)
    _rules: dict[tuple[str, str, str], Rule] = field(default_factory=dict)

    def fragments_for(self, policy: Path) -> Path:
        """A workspace's documents include the workspace's own fragments; the others the service's."""
        root = self.extraction.root
        if policy.is_relative_to(root / "workspaces"):
            workspace = policy.relative_to(root / "workspaces").parts[0]
            return root / "workspaces" / workspace / "policy fragments"
        return root / "policy fragments"

    def values(self, *, placeholders: bool = False) -> dict[str, str]:
        """Display name → value, for ``{{…}}`` substitution (unfetched Key Vault values as a placeholder; with
        ``placeholders`` missing ones too)."""
        out = {}
        for name, state in self.named.items():
            if state.value is not None:
                out[name] = state.value
            elif state.origin == "key vault":
                out[name] = KEY_VAULT_PLACEHOLDER
            elif placeholders:
                out[name] = MISSING_PLACEHOLDER
        return out

    def key_vault_pending(self) -> list[NamedValueState]:
        return [s for s in self.named.values() if s.origin == "key vault" and s.value is None]

    def compile(self, *, collect: bool = False) -> None:
        """(Re)compiles every policy file with the current named values. ``collect``: keep going after an error
        (``apim-mi validate``); otherwise the first error is raised."""
        values = self.values(placeholders=collect)
        policies: dict[Path, Policy] = {}
        self.errors = []
        seen: set[str] = set()
        for path, scope in self.policy_files():
            try:
                policies[path] = loader.load_policy_file(
                    path, named_values=values, fragments_dir=self.fragments_for(path), scope=scope
                )
            except LoadError as e:
                if not collect:
                    raise
                if str(e) not in seen:  # a broken fragment is reported once, not once per includer
                    seen.add(str(e))
                    self.errors.append(e)
        self.policies = policies
        self._rules = {}

    def policy_files(self) -> list[tuple[Path, str]]:
        ext = self.extraction
        out: list[tuple[Path, str]] = []
        if ext.global_policy:
            out.append((ext.global_policy, "global"))
        out += [(p, "workspace") for p in ext.workspace_policies.values()]
        out += [(p.policy, "product") for p in ext.products.values() if p.policy]
        for api in ext.apis.values():
            if api.policy:
                out.append((api.policy, "api"))
            out += [(p, "operation") for p in api.operation_policies.values()]
        return out

    # -- composition ----------------------------------------------------------------------------------------------

    def composed(self, api: ApiDef, operation: OperationDef | None, product: ProductDef | None) -> Policy:
        """global → workspace → product → API → operation; a missing document is ``<base/>`` everywhere."""
        ext = self.extraction
        chain = [ext.global_policy, ext.workspace_policies.get(api.workspace) if api.workspace else None,
                 product.policy if product else None, api.policy,
                 api.operation_policies.get(operation.name) if operation else None]  # fmt: skip
        policy = loader.DEFAULT_GLOBAL
        for path in chain:
            if path is not None and path in self.policies:
                policy = loader.compose(policy, self.policies[path])
        return policy

    def rule(self, api: ApiDef, operation: OperationDef | None, product: ProductDef | None) -> Rule:
        """The composed policy of one (API, operation, product) as a ``Rule``, built once and kept."""
        key = (api.name, operation.name if operation else "", product.name if product else "")
        rule = self._rules.get(key)
        if rule is None:
            name = f"{api.name}/{operation.name}" if operation else api.name
            location = api.info
            if operation is not None and operation.name in api.operation_policies:
                location = Location(str(api.operation_policies[operation.name]))
            rule = Rule(
                name=f"{name} [{product.name}]" if product else name,
                index=len(self._rules),
                match=MatchSpec(path="/" + api.path),
                policy=self.composed(api, operation, product),
                location=location,
            )
            self._rules[key] = rule
        return rule

    def publish_backends(self) -> dict[str, Backend]:
        """(Re)computes the backend entities into ``targets`` (in place: the addon holds that dict)."""
        for name, backend in self.backend_settings().items():
            if name not in self.shadowed:
                self.targets[name] = backend
        return self.targets

    def backend_settings(self) -> dict[str, Backend]:
        """``set-backend-service backend-id`` lookups: id → the APIM backend entity, named values substituted."""
        values = self.values()
        out: dict[str, Backend] = {}
        for name, b in self.backends.items():
            try:
                out[name] = parse_backend(name, _substitute_tree(b.properties, values))
            except BackendError as e:
                raise LoadError(b.info, str(e)) from None
        try:
            check_pools(out)
        except BackendError as e:
            raise LoadError(
                self.backends[e.backend].info if e.backend in self.backends else Location("backends"), str(e)
            ) from None
        return out


def _substitute(text: str, values: Mapping[str, str]) -> str:
    return _REFERENCE.sub(lambda m: values.get(m.group(1).strip(), m.group(0)), text)


def _substitute_tree(data: object, values: Mapping[str, str]) -> object:
    if isinstance(data, str):
        return _substitute(data, values)
    if isinstance(data, list):
        return [_substitute_tree(v, values) for v in data]
    if isinstance(data, dict):
        return {k: _substitute_tree(v, values) for k, v in data.items()}
    return data


def build(ext: Extraction, overrides: Overrides, env: Mapping[str, str] | None = None) -> Instance:
    """Applies the overrides and resolves named values; policies are not compiled yet (``compile``)."""
    env = os.environ if env is None else env
    inst = Instance(ext, overrides)
    for name, props in overrides.apis.items():
        api = ext.apis.get(name)
        if api is None:
            ext.warnings.append(f"overrides: API '{name}' is not in the extraction")
        elif "serviceUrl" in props:
            api.service_url = str(props["serviceUrl"] or "")
    inst.backends = dict(ext.backends)
    for name, props in overrides.backends.items():  # local URLs (or whole entities) over the extracted ones
        base = ext.backends.get(name)
        merged = {**(base.properties if base else {}), **props}
        inst.backends[name] = BackendDef(name, base.info if base else Location("overrides"), merged)
    _resolve_named_values(inst, env)
    _subscriptions(inst)
    return inst


def _resolve_named_values(inst: Instance, env: Mapping[str, str]) -> None:
    ext, ov = inst.extraction, inst.overrides
    for nv in ext.named_values.values():
        props = ov.named_value_properties.get(nv.name, {})
        display = str(props.get("displayName") or nv.display_name)
        key_vault = (
            (props.get("keyVault") or {}).get("secretIdentifier") if isinstance(props.get("keyVault"), dict) else None
        )
        if nv.name in ov.named_values or display in ov.named_values:
            state = NamedValueState(nv, "override", ov.named_values.get(nv.name, ov.named_values.get(display)))
        elif isinstance(props.get("value"), str | int | float | bool):
            state = NamedValueState(nv, "configuration", str(props["value"]))
        elif env_name(display) in env:
            state = NamedValueState(nv, "environment", env[env_name(display)])
        elif nv.value is not None and not is_placeholder(nv.value) and not key_vault:
            state = NamedValueState(nv, "extracted", nv.value)
        elif key_vault or nv.key_vault:
            nv.key_vault = str(key_vault or nv.key_vault)
            state = NamedValueState(nv, "key vault")
        else:
            state = NamedValueState(nv, "missing")
        inst.named[display] = state
    for name, value in ov.named_values.items():  # local-only named values (not in the extraction)
        if name not in inst.named and name not in ext.named_values:
            inst.named[name] = NamedValueState(
                NamedValueDef(name, name, Location("overrides"), value), "override", value
            )
    _find_uses(inst)


def _find_uses(inst: Instance) -> None:
    """Where each named value is first used (policies, fragments, backends, service URLs): a missing one that is
    used is an error at that place."""
    texts: list[tuple[Path | Location, str]] = []
    for path, _ in inst.policy_files():
        texts.append((path, path.read_text("utf-8-sig", errors="replace")))
    texts += [(path, path.read_text("utf-8-sig", errors="replace")) for path in inst.extraction.fragments.values()]
    for b in inst.backends.values():
        texts.append((b.info, str(b.properties)))
    for api in inst.extraction.apis.values():
        texts.append((api.info, api.service_url))
    for where, text in texts:
        for m in _REFERENCE.finditer(text):
            state = inst.named.get(m.group(1).strip())
            if state is not None and state.used_at is None:
                if isinstance(where, Location):
                    state.used_at = where
                else:
                    line = text.count("\n", 0, m.start()) + 1
                    state.used_at = Location(str(where), line, m.start() - text.rfind("\n", 0, m.start()))


def missing_error(state: NamedValueState) -> LoadError:
    nv = state.definition
    what = "a secret whose value is not extracted" if nv.secret else "without a value"
    return LoadError(
        state.used_at or nv.info,
        f"named value '{nv.display_name}' is {what}; give it in the overrides "
        f"(named_values: {{{nv.display_name}: …}}) or as the environment variable {env_name(nv.display_name)}",
    )


def check_named_values(inst: Instance) -> None:
    """The first named value that is used and has no value anywhere, as an error."""
    for state in inst.named.values():
        if state.origin == "missing" and state.used_at is not None:
            raise missing_error(state)


def _subscriptions(inst: Instance) -> None:
    ext, ov = inst.extraction, inst.overrides
    subs = dict(ext.subscriptions)
    for name, local in ov.subscriptions.items():
        base = subs.get(name)
        if base is None:
            base = SubscriptionDef(name, name, local.get("scope", ("all", "")), Location("overrides"))
        elif "scope" in local:
            base.scope = local["scope"]
        base.keys = list(local["keys"])
        subs[name] = base
    inst.subscriptions = subs
