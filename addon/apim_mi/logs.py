"""apim-mi's log records, handed to the root logger's handlers directly.

mitmproxy's ``LegacyLogEvents`` handler turns every log record into a deprecated ``add_log`` hook dispatched to
every addon: for the one line each flow logs, that costs about as much as one more hook event of the whole proxy.
apim-mi's records skip that handler and reach all the others (the terminal, mitmweb's event log, mitmdump's startup
error check, ``logging`` handlers that tests or scripts add) exactly as propagation would. And a per-flow line that
no handler would show (``termlog_verbosity=warn`` in mitmdump, nothing else listening) is not built at all.
"""

from __future__ import annotations

import logging

_LEGACY = "LegacyLogEvents"


class RootHandlers(logging.Handler):
    """Passes a record to each handler of the root logger (as propagation does: level check, then the handler's own
    filters), except mitmproxy's deprecated ``add_log`` bridge."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level and type(handler).__name__ != _LEGACY:
                handler.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def route(logger: logging.Logger) -> None:
    """``logger``'s records go to the root logger's handlers past ``LegacyLogEvents`` (idempotent)."""
    if not any(isinstance(h, RootHandlers) for h in logger.handlers):
        logger.addHandler(RootHandlers())
    logger.propagate = False


def unroute(logger: logging.Logger) -> None:
    """Back to plain propagation (the addon is unloaded)."""
    for handler in [h for h in logger.handlers if isinstance(h, RootHandlers)]:
        logger.removeHandler(handler)
    logger.propagate = True


def wanted(logger: logging.Logger, level: int) -> bool:
    """Whether a record at ``level`` would reach any handler: when none would show it, the caller need not build it."""
    if not logger.isEnabledFor(level):
        return False
    if logger.propagate or any(level >= h.level for h in logger.handlers if not isinstance(h, RootHandlers)):
        return True
    return any(level >= h.level and type(h).__name__ != _LEGACY for h in logging.getLogger().handlers)
