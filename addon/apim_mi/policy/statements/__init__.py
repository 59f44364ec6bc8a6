"""One handler per APIM policy element; ``HANDLERS`` maps element names to them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import (
    access,
    ai,
    backends,
    caching,
    clientcert,
    core,
    crossdomain,
    effects,
    http,
    limits,
    messages,
    odata,
    routing,
    security,
    transform,
    validation,
)

if TYPE_CHECKING:
    from ..engine import Binder, Handler

HANDLERS: Mapping[str, Handler] = {
    **core.HANDLERS,
    **backends.HANDLERS,
    **caching.HANDLERS,
    **crossdomain.HANDLERS,
    **effects.HANDLERS,
    **limits.HANDLERS,
    **http.HANDLERS,
    **messages.HANDLERS,
    **routing.HANDLERS,
    **security.HANDLERS,
    **transform.HANDLERS,
    **access.HANDLERS,
    **validation.HANDLERS,
    **odata.HANDLERS,
    **clientcert.HANDLERS,
    **ai.HANDLERS,
}

#: The handlers that resolve their statements once (``engine.Binder``), by element name.
BINDERS: Mapping[str, Binder] = {**core.BINDERS, **routing.BINDERS}
