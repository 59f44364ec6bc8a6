"""Fault injection for the token endpoints.

A fault spec is a JSON object (or a shorthand string) consumed by token requests in queue order::

    {"kind": "status", "status": 503, "retry_after": 1}     # HTTP error in the protocol's error shape
    {"kind": "timeout", "delay_ms": 30000}                 # say nothing for delay_ms, then drop the connection
    {"kind": "slow", "delay_ms": 800}                      # delay, then a normal token
    {"kind": "drop"}                                       # close the connection without a reply
    {"kind": "malformed"}                                  # 200, application/json, truncated JSON
    {"kind": "empty"}                                      # 200, application/json, empty body
    {"kind": "wrong_audience", "audience": "api://other"}  # valid token whose aud is not the requested resource
    {"kind": "expired"}                                    # token (and expires_on) already in the past

Common fields: ``times`` (default 1; ``null`` = sticky, never consumed), ``resource`` and ``client_id`` (target only
requests for that exact resource / identity; ``client_id: "system"`` targets the system-assigned identity),
``message`` (error text for ``status``). Shorthands: ``"500"``/``500`` = status 500, ``"timeout"``, ``"drop"``,
``"malformed"`` … = that kind with its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    STATUS = "status"
    TIMEOUT = "timeout"
    SLOW = "slow"
    DROP = "drop"
    MALFORMED = "malformed"
    EMPTY = "empty"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"


#: Kinds that replace the token reply; the others still mint a token (possibly altered).
REPLACING_KINDS = frozenset({FaultKind.STATUS, FaultKind.TIMEOUT, FaultKind.DROP, FaultKind.MALFORMED, FaultKind.EMPTY})

DEFAULT_TIMEOUT_MS = 60_000
DEFAULT_WRONG_AUDIENCE = "api://wrong-audience"


@dataclass(frozen=True)
class Fault:
    """One injected failure; see the module docstring for the JSON form."""

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    delay_ms: int = 0
    audience: str | None = None
    message: str | None = None
    resource: str | None = None
    client_id: str | None = None
    times: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if self.kind is FaultKind.STATUS and not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be 4xx or 5xx, got {self.status}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"fault times must be >= 1 or null (sticky), got {self.times}")
        if self.delay_ms < 0:
            raise ValueError(f"fault delay_ms must be >= 0, got {self.delay_ms}")

    @property
    def sticky(self) -> bool:
        return self.times is None

    @property
    def effective_delay_ms(self) -> int:
        if self.kind is FaultKind.TIMEOUT and not self.delay_ms:
            return DEFAULT_TIMEOUT_MS
        return self.delay_ms

    def targets(self, resource: str, identity_key: str) -> bool:
        """Whether this fault applies to a request for ``resource`` by ``identity_key`` ("system" or client id)."""
        if self.resource is not None and self.resource != resource:
            return False
        return self.client_id is None or self.client_id.lower() == identity_key.lower()

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if k == "kind" else v) for k, v in asdict(self).items() if v is not None or k == "times"}

    @classmethod
    def parse(cls, spec: Fault | str | int | Mapping[str, Any]) -> Fault:
        """Build a fault from its JSON object or a shorthand (``500``, ``"503"``, ``"timeout"``)."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"invalid fault spec {spec!r}")
        if isinstance(spec, int):
            return cls(FaultKind.STATUS, status=spec)
        if isinstance(spec, str):
            text = spec.strip()
            if text.isdigit():
                return cls(FaultKind.STATUS, status=int(text))
            try:
                return cls(FaultKind(text))
            except ValueError:
                raise ValueError(f"unknown fault {spec!r}; kinds: {', '.join(k.value for k in FaultKind)}") from None
        if isinstance(spec, Mapping):
            return cls._from_mapping(spec)
        raise ValueError(f"invalid fault spec {spec!r}")

    @classmethod
    def _from_mapping(cls, spec: Mapping[str, Any]) -> Fault:
        fields = set(cls.__dataclass_fields__)
        unknown = set(spec) - fields
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
        if "kind" not in spec:
            if "status" not in spec:
                raise ValueError("a fault needs a 'kind' (or a 'status')")
            spec = {**spec, "kind": FaultKind.STATUS}
        try:
            kind = FaultKind(spec["kind"])
        except ValueError:
            raise ValueError(
                f"unknown fault kind {spec['kind']!r}; kinds: {', '.join(k.value for k in FaultKind)}"
            ) from None
        values = {**spec, "kind": kind}
        _check_types(values)
        return cls(**values)


_INT_FIELDS = ("status", "delay_ms", "times")
_STR_FIELDS = ("audience", "message", "resource", "client_id")


def _check_types(values: Mapping[str, Any]) -> None:
    """JSON gives us anything; fail with a message instead of a TypeError deep inside a request."""
    for name in _INT_FIELDS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"fault field {name!r} must be an integer, got {value!r}")
    for name in _STR_FIELDS:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"fault field {name!r} must be a string, got {value!r}")
    retry_after = values.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int | float)):
        raise ValueError(f"fault field 'retry_after' must be a number, got {retry_after!r}")


class FaultQueue:
    """Faults waiting for token requests; the first one that targets a request is taken (sticky ones stay)."""

    def __init__(self) -> None:
        self._faults: list[tuple[Fault, int | None]] = []

    def add(self, *faults: Fault) -> None:
        self._faults.extend((f, f.times) for f in faults)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, resource: str, identity_key: str) -> Fault | None:
        for index, (fault, remaining) in enumerate(self._faults):
            if not fault.targets(resource, identity_key):
                continue
            if remaining is not None:
                if remaining <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = (fault, remaining - 1)
            return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [{**fault.to_json(), "remaining": remaining} for fault, remaining in self._faults]

    def __len__(self) -> int:
        return len(self._faults)
