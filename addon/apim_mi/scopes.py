"""v2 scopes (``api://x/.default``) in rules files, turned into the v1 resource a managed identity takes.

A managed identity gets app-only tokens for one resource at a time, so a rule's scope must be exactly one
``<resource>/.default``. The resource is the scope without that suffix, byte for byte, as azure-identity derives it:
``https://management.core.windows.net//.default`` is the resource ``https://management.core.windows.net/``.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SUFFIX = "/.default"


def resource_from_scope(scope: str | Sequence[str]) -> str:
    """The resource of a one-scope list or string; ``ValueError`` (a message for the user) otherwise."""
    scopes = scope.split() if isinstance(scope, str) else [s for item in scope for s in str(item).split()]
    if not scopes:
        raise ValueError("scope is empty; write one '<resource>/.default' scope, e.g. 'api://<app id>/.default'")
    if len(scopes) > 1:
        raise ValueError(
            f"a managed identity can only use one '.default' scope per token, got {len(scopes)} "
            f"({', '.join(scopes)}); write one rule per resource"
        )
    only = scopes[0]
    if not only.endswith(DEFAULT_SUFFIX):
        raise ValueError(
            f"scope '{only}' is not a '.default' scope: a managed identity gets app-only tokens with the roles granted "
            f"to it, never delegated permissions; use '{_default_scope_for(only)}'"
        )
    resource = only.removesuffix(DEFAULT_SUFFIX)
    if not resource:
        raise ValueError("scope '/.default' names no resource; write '<resource>/.default'")
    return resource


def _default_scope_for(scope: str) -> str:
    """``https://graph.microsoft.com/User.Read`` → ``…/.default``; a bare resource gets the suffix appended."""
    rest = scope.split("://", 1)[-1]
    if "/" in rest and not rest.endswith("/"):
        return scope.rsplit("/", 1)[0] + DEFAULT_SUFFIX
    return scope + DEFAULT_SUFFIX


def scope_of(resource: str) -> str:
    """The v2 scope of a v1 resource (a resource ending in '/' gets the double slash Entra expects)."""
    return resource + DEFAULT_SUFFIX
