"""Typed errors shared by every stage, so callers never need to catch bare exceptions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where something was written: file (or ``<inline>``), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


class ApimMiError(Exception):
    """Base class of every error apim-mi raises on purpose."""


class LoadError(ApimMiError):
    """A rules, policy or fragment file cannot be used. Always carries a location."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class PolicyError(ApimMiError):
    """A policy failed while running; becomes ``context.LastError`` and sends control to on-error.

    ``reason`` follows APIM's LastError.Reason (e.g. ``ExpressionValueEvaluationFailure``).
    """

    def __init__(
        self,
        source: str,
        message: str,
        reason: str = "",
        *,
        section: str = "",
        path: str = "",
        policy_id: str = "",
    ) -> None:
        super().__init__(message)
        self.source = source
        self.message = message
        self.reason = reason
        self.section = section
        self.path = path
        self.policy_id = policy_id
