"""An APIOps extraction (``apimartifacts/``) as the rules: the team's real APIM instance, run by the proxy.

``mi_rules`` may name the extraction folder itself, or a rules file whose ``apim:`` names it (with local overrides);
the rules file's own rules are matched first. Stages: ``reader`` (files → ``Extraction``), ``overrides`` (local
values), ``instance`` (named values, compiled and composed policies), ``routing`` (request → API, operation,
subscription, product), ``keyvault`` (Key Vault-backed named values), ``report`` (``apim-mi validate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import LoadError
from .instance import Instance, build, check_named_values
from .overrides import Overrides, apply_mapping
from .reader import is_extraction, read_extraction
from .routing import Answer, Gateway, GatewayRequest, Routed

__all__ = [
    "Answer",
    "Gateway",
    "GatewayRequest",
    "Instance",
    "Routed",
    "from_rules_entry",
    "is_extraction",
    "load_gateway",
    "load_instance",
    "validate_extraction",
]


def load_instance(
    path: Path, overrides: Overrides | None = None, *, collect: bool = False, env: Mapping[str, str] | None = None
) -> Instance:
    """Reads, resolves and compiles. ``collect``: report every policy error in ``instance.errors`` instead of
    raising the first (``apim-mi validate``)."""
    inst = build(read_extraction(path), overrides or Overrides(), env)
    if not collect:
        check_named_values(inst)
    inst.compile(collect=collect)
    return inst


def load_gateway(path: Path, overrides: Overrides | None = None) -> Gateway:
    return Gateway(load_instance(path, overrides))


def from_rules_entry(entry: Any, base_dir: Path, at: Any) -> Gateway:
    """The ``apim:`` entry of a rules file: a folder, or a mapping ``{extraction: folder, overrides…}``.
    ``at(path)`` locates a key of the entry in the rules file."""
    if isinstance(entry, str):
        entry = {"extraction": entry}
    if not isinstance(entry, dict) or not entry.get("extraction"):
        raise LoadError(
            at(("apim",)),
            "apim: name the APIOps extraction folder (apim: path, or apim: {extraction: path, …overrides})",
        )
    folder = (base_dir / str(entry["extraction"])).resolve()
    if not folder.is_dir():
        raise LoadError(
            at(("apim", "extraction")) if "extraction" in entry else at(("apim",)),
            f"APIOps extraction folder '{entry['extraction']}' not found (looked for {folder})",
        )
    overrides = apply_mapping(entry, base_dir, lambda p: at(("apim", *p)), Overrides())
    return load_gateway(folder, overrides)


def validate_extraction(path: Path, *, effective: bool = False) -> int:
    """``apim-mi validate DIR``: every policy error and warning, located; exit code 0 ok, 1 warnings, 2 errors."""
    from .report import report

    try:
        gateway = Gateway(load_instance(path, collect=True))
    except LoadError as e:
        print(f"error: {e}")
        return 2
    errors, warnings = report(gateway, effective=effective)
    print(f"{errors} error(s), {warnings} warning(s)" if errors or warnings else "ok")
    return 2 if errors else 1 if warnings else 0
