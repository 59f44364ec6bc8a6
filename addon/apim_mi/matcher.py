"""Compiled rule matching: which rule (first in file order) applies to a request.

Rules are indexed by exact host and by wildcard suffix, and within a host by the literal path prefix of their
pattern, so a request only looks at the few rules that can match its host and path; the answer is the
lowest-indexed candidate whose port, scheme, method and path also match. This keeps a match in the microseconds at
10 000 rules, even when they all share one host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote

from .rules import MatchSpec, Rule

#: Request lines ``Matcher.match_line`` remembers (then it forgets them all and starts again), and the longest
#: path it remembers: clients repeat a few URLs, and a bound keeps a scan of unique URLs from growing the memo.
MEMO_SIZE = 2048
MEMO_PATH = 512


class RequestTarget(NamedTuple):
    """What matching looks at; built from a flow by the addon, or by hand in tests and the CLI (a tuple: made on
    every flow)."""

    scheme: str
    host: str
    port: int
    path: str
    method: str


class RequestLine(NamedTuple):
    """A request as mitmproxy holds it (``request.data``'s scheme, host, port, path and method, undecoded): the key
    ``Matcher.match_line`` remembers its answers by, so a repeated request line is matched with one dict lookup."""

    scheme: bytes
    host: str
    port: int
    path: bytes
    method: bytes

    def target(self) -> RequestTarget:
        """What matching looks at: decoded, the query dropped, the method upper-case."""
        return RequestTarget(self.scheme.decode("utf-8", "surrogateescape"), self.host, self.port,
                             normalize_path(self.path.decode("utf-8", "surrogateescape")),
                             self.method.decode("utf-8", "surrogateescape").upper())  # fmt: skip


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches any run of characters (slashes included), ``?`` one character."""
    out = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(out + r"\Z", re.DOTALL)


def path_matches(pattern: str, path: str) -> bool:
    """Glob, or a prefix on segment boundaries: ``/api`` matches ``/api`` and ``/api/x`` but not ``/apix``."""
    if "*" in pattern or "?" in pattern:
        return _glob(pattern).match(path) is not None
    if pattern == "/" or path == pattern:
        return True
    if pattern.endswith("/"):
        return path.startswith(pattern)
    return path.startswith(pattern + "/")


def host_matches(pattern: str, host: str) -> bool:
    """``*`` any host; ``*.example.com`` one or more labels under it (not the apex); else exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def spec_matches(spec: MatchSpec, target: RequestTarget) -> bool:
    """Everything but the host (the index already chose candidates by host)."""
    return (
        (spec.port is None or spec.port == target.port)
        and (spec.scheme is None or spec.scheme == target.scheme)
        and (not spec.methods or target.method in spec.methods)
        and path_matches(spec.path, target.path)
    )


def normalize_path(raw_path: str) -> str:
    """The decoded path without the query, as matching sees it."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    return (unquote(path) if "%" in path else path) or "/"


def _pattern_key(pattern: str) -> str | None:
    """The literal path every path matching ``pattern`` equals or continues with ``/``; None if there is none.

    ``/api/v1`` and ``/api/v1/`` → ``/api/v1``; ``/api/v*/x`` → ``/api``; ``/``, ``/*``, ``/v1*`` → None.
    """
    if not pattern.startswith("/") or pattern == "/":
        return None
    g = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=-1)
    if g < 0:
        return pattern[:-1] if pattern.endswith("/") else pattern
    k = pattern.rfind("/", 0, g)
    return pattern[:k] if k >= 1 else None


def path_keys(path: str) -> list[str]:
    """Every key a rule matching ``path`` can have: the path up to each inner ``/``, and the whole path."""
    keys = []
    i = path.find("/", 1)
    while i >= 0:
        keys.append(path[:i])
        i = path.find("/", i + 1)
    keys.append(path)
    return keys


class _Bucket:
    """The rules of one host key, indexed by the literal path prefix of their pattern (``_pattern_key``)."""

    __slots__ = ("by_key", "rest")

    def __init__(self) -> None:
        self.by_key: dict[str, list[Rule]] = {}
        self.rest: list[Rule] = []

    def add(self, rule: Rule) -> None:
        key = _pattern_key(rule.match.path)
        if key is None:
            self.rest.append(rule)
        else:
            self.by_key.setdefault(key, []).append(rule)

    def lists(self, keys: list[str], out: list[list[Rule]]) -> None:
        if self.rest:
            out.append(self.rest)
        by_key = self.by_key
        if by_key:
            for key in keys:
                found = by_key.get(key)
                if found:
                    out.append(found)


class Matcher:
    """First-match lookup over a rule list."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._exact: dict[str, _Bucket] = {}
        self._suffix: dict[str, _Bucket] = {}
        self._any = _Bucket()
        self._lines: dict[RequestLine, Rule | None] = {}
        for rule in self.rules:
            host = rule.match.host
            if host == "*":
                self._any.add(rule)
            elif host.startswith("*."):
                self._suffix.setdefault(host[1:], _Bucket()).add(rule)
            else:
                self._exact.setdefault(host, _Bucket()).add(rule)

    def _candidates(self, host: str, path: str) -> list[list[Rule]]:
        keys = path_keys(path)
        lists: list[list[Rule]] = []
        self._any.lists(keys, lists)
        bucket = self._exact.get(host)
        if bucket is not None:
            bucket.lists(keys, lists)
        if self._suffix:
            dot = host.find(".")
            while dot >= 0:
                bucket = self._suffix.get(host[dot:])
                if bucket is not None:
                    bucket.lists(keys, lists)
                dot = host.find(".", dot + 1)
        return lists

    def match(self, target: RequestTarget) -> Rule | None:
        host = target.host.lower().rstrip(".")
        best: Rule | None = None
        for bucket in self._candidates(host, target.path):
            for rule in bucket:
                if best is not None and rule.index >= best.index:
                    break
                if spec_matches(rule.match, target):
                    best = rule
                    break
        return best

    def match_line(self, line: RequestLine) -> Rule | None:
        """``match`` of a request line, remembered (a pure function of the line and this matcher's rules)."""
        lines = self._lines
        try:
            return lines[line]
        except KeyError:
            rule = self.match(line.target())
            if len(line.path) <= MEMO_PATH:
                if len(lines) >= MEMO_SIZE:
                    lines.clear()
                lines[line] = rule
            return rule

    def shadowed(self) -> list[tuple[Rule, Rule]]:
        """(rule, earlier rule) pairs where the earlier rule matches everything the later one could."""
        out: list[tuple[Rule, Rule]] = []
        for i, later in enumerate(self.rules):
            for earlier in self.rules[:i]:
                if _covers(earlier.match, later.match):
                    out.append((later, earlier))
                    break
        return out


def _host_covers(a: str, b: str) -> bool:
    if a in ("*", b):
        return True
    if not a.startswith("*.") or b == "*":
        return False
    return b[1:].endswith(a[1:]) if b.startswith("*.") else host_matches(a, b)


def _covers(a: MatchSpec, b: MatchSpec) -> bool:
    """Whether every request matching ``b`` also matches ``a`` (conservative: False when unsure)."""
    if not _host_covers(a.host, b.host):
        return False
    if a.port is not None and a.port != b.port:
        return False
    if a.scheme is not None and a.scheme != b.scheme:
        return False
    if a.methods and (not b.methods or not b.methods <= a.methods):
        return False
    if "*" in a.path or "?" in a.path:
        return a.path in ("*", "/*") or a.path == b.path
    if "*" in b.path or "?" in b.path:
        return a.path == "/" or b.path.startswith(a.path.rstrip("/") + "/")
    return path_matches(a.path, b.path)
