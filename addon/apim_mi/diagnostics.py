"""Diagnostics APIM does not give: why a backend rejected the managed identity token.

Pure functions (no mitmproxy, no network). The addon calls :func:`diagnose_rejection` when a backend answers 401 or
403 to a request that carries an injected token, with the backend's ``WWW-Authenticate`` values and the token's
audience. The backend's expectations are read from the formats real services use:

* the demo backend / RFC 6750: ``Bearer realm="…", error="invalid_token", error_description="The audience 'x' is
  invalid; expected 'a', 'b'", resource_id="a"``
* App Service / Functions Easy Auth: ``Bearer realm="app.azurewebsites.net" authorization_uri="…" resource_id="<client
  id>"`` (space separated)
* Azure Storage: ``Bearer authorization_uri=https://… resource_id=https://storage.azure.com`` (unquoted)
* Key Vault: ``Bearer authorization="…", resource="https://vault.azure.net"`` (newer: ``scope="…/.default"``)
* ASP.NET Core JwtBearer: ``error_description="The audience 'x' is invalid"``; Microsoft.IdentityModel IDX10214:
  ``Audiences: 'x'. Did not match: validationParameters.ValidAudience: 'y' or validationParameters.ValidAudiences:
  'a, b'``.

Near misses are the mistakes SPEC §7 names: ``api://`` vs a bare GUID, a trailing slash, letter case (and a
``/.default`` suffix, a scope pasted where a resource belongs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_PARAM = re.compile(r"""([A-Za-z0-9_.\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))""")
_TOKEN = re.compile(r"[A-Za-z0-9_.\-!#$%&'*+^`|~]+")
_EXPECTED = re.compile(r"expected\s+((?:'[^']*'(?:\s*,\s*|\s+or\s+|\s*)?)+)", re.I)
_VALID_AUDIENCES = re.compile(r"ValidAudiences?:\s*'([^']*)'")
_TOKEN_AUDIENCE = re.compile(r"(?:The audience|Audiences:)\s*'([^']*)'", re.I)
_QUOTED = re.compile(r"'([^']*)'")
_EMPTY = {"", "null", "empty", "(null)"}
MAX_SHOWN = 300


@dataclass
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: its scheme and parameters (names lower-cased)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_www_authenticate(values: Iterable[str]) -> list[Challenge]:
    """Challenges from one or more header values; tolerant of the comma-less and unquoted forms Azure services use."""
    out: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            ch = value[pos]
            if ch in " \t,":
                pos += 1
                continue
            m = _PARAM.match(value, pos)
            if m:
                raw = m.group(2) if m.group(2) is not None else m.group(3)
                if m.group(2) is not None:
                    raw = re.sub(r"\\(.)", r"\1", raw)
                if not out:
                    out.append(Challenge(""))
                out[-1].params.setdefault(m.group(1).lower(), raw)
                pos = m.end()
                continue
            t = _TOKEN.match(value, pos)
            if t:
                out.append(Challenge(t.group(0)))
                pos = t.end()
                continue
            pos += 1
    return out


def _split_list(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip().lower() not in _EMPTY]


def expected_audiences(challenges: Sequence[Challenge]) -> list[str]:
    """The audiences the backend says it accepts: named in ``error_description``, then ``resource_id``, ``resource``
    and ``scope`` (without ``/.default``). Duplicates removed, order kept; hidden PII values skipped."""
    found: list[str] = []
    for c in challenges:
        desc = c.params.get("error_description", "")
        m = _EXPECTED.search(desc)
        if m:
            found += [a for a in _QUOTED.findall(m.group(1)) if a.lower() not in _EMPTY]
        for v in _VALID_AUDIENCES.findall(desc):
            found += _split_list(v)
        for name in ("resource_id", "resource", "scope"):
            value = c.params.get(name, "").strip()
            if name == "scope":
                value = value.split()[0] if value else ""
                value = value[: -len("/.default")] if value.endswith("/.default") else value
            if value:
                found.append(value)
    out: list[str] = []
    for a in found:
        if a not in out and not a.startswith("[PII"):
            out.append(a)
    return out


def rejected_audience(challenges: Sequence[Challenge]) -> str | None:
    """The audience the backend says it rejected (``The audience 'x' is invalid``, IDX10214 ``Audiences: 'x'``)."""
    for c in challenges:
        m = _TOKEN_AUDIENCE.search(c.params.get("error_description", ""))
        if m and m.group(1).lower() not in _EMPTY and not m.group(1).startswith("[PII"):
            return m.group(1)
    return None


def near_miss(actual: str, expected: str) -> list[str] | None:
    """What makes ``actual`` differ from ``expected`` if the difference is only an ``api://`` prefix, a trailing slash,
    letter case or a ``/.default`` suffix; ``None`` when they are equal or differ in anything else."""
    if actual == expected:
        return None
    a, e, diffs = actual, expected, []
    if a.endswith("/.default") != e.endswith("/.default"):
        a, e = a.removesuffix("/.default"), e.removesuffix("/.default")
        diffs.append("a '/.default' suffix (that is a scope; resource takes the bare audience)")
    if a.lower().startswith("api://") != e.lower().startswith("api://"):
        a, e = (a[6:] if a.lower().startswith("api://") else a), (e[6:] if e.lower().startswith("api://") else e)
        diffs.append("the 'api://' prefix")
    if a.endswith("/") != e.endswith("/"):
        a, e = a.rstrip("/"), e.rstrip("/")
        diffs.append("a trailing slash")
    if a != e and a.lower() == e.lower():
        diffs.append("letter case")
        a = e
    return diffs if a == e and diffs else None


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _shown(values: Sequence[str]) -> str:
    text = " | ".join(values)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


#: The statuses a backend refuses a token with: what ``diagnose_rejection`` explains.
REJECTIONS = frozenset({401, 403})


def diagnose_rejection(status: int, www_authenticate: Sequence[str], audiences: Sequence[str]) -> list[str]:
    """Messages explaining a 401/403 from the backend to a request carrying a managed identity token whose audience
    is one of ``audiences``. Empty when ``status`` is not 401/403 or no token was injected."""
    if status not in REJECTIONS or not audiences:
        return []
    challenges = parse_www_authenticate(www_authenticate)
    expected = expected_audiences(challenges)
    description = next((c.params["error_description"] for c in challenges if c.params.get("error_description")), "")
    seen_aud = rejected_audience(challenges)
    token_auds = [a for a in audiences if a]
    messages: list[str] = []
    for aud in token_auds:
        if aud in expected:
            continue
        for exp in expected:
            diffs = near_miss(aud, exp)
            if diffs:
                messages.append(
                    f"Audience near miss: the token's audience is '{aud}' but the backend expects '{exp}'; they differ "
                    f"only by {_join(diffs)}. Entra issues the audience exactly as the policy's resource is written: "
                    f"use resource=\"{exp}\" (scope: '{exp}/.default' in a rules file) (or make the backend accept "
                    f"'{aud}')."
                )
    if messages:
        return messages
    if status == 403:
        tail = f" The backend says: {description}" if description else ""
        return [f"The backend refused the request (403) although it carried a managed identity token for "
                f"'{token_auds[0]}': the identity probably lacks an app role or permission on the backend.{tail}"]
    if expected and not any(a in expected for a in token_auds):
        return [f"The backend expects audience {_join([repr(e) for e in expected])} but the token's audience is "
                f"{_join([repr(a) for a in token_auds])}. Set the policy's resource (or the rule's scope, plus "
                "'/.default') to what the backend expects."]
    if expected or (seen_aud and seen_aud in token_auds and description):
        why = f": {description}" if description else ""
        return [f"The backend rejected the managed identity token although its audience '{token_auds[0]}' is one it "
                f"accepts{why} (check issuer/tenant, expiry, and the backend's allowed client applications)."]
    if www_authenticate:
        return [f"The backend rejected the managed identity token (401). WWW-Authenticate: {_shown(www_authenticate)}"]
    return ["The backend rejected the managed identity token (401) without a WWW-Authenticate header."]


REFLECTED = (
    "The backend's response body contains the managed identity token (it echoes request headers?). mi_redact cannot "
    "take it out without changing what the client receives, so saved flows and mitmweb show it; limit saving with "
    "save_stream_filter or stop the backend from echoing Authorization."
)


#: Bodies larger than this are not scanned for an echoed token.
SCAN_LIMIT = 4 * 1024 * 1024


def forms(secret: str) -> tuple[bytes, tuple[bytes, ...]]:
    """A secret as bytes, and its ``echoes``: what the sent-token check, redaction and the echo check look for."""
    return secret.encode(), echoes(secret) if secret else ()


def echoes(secret: str) -> tuple[bytes, ...]:
    """What of a secret a body that echoes it would show: for a JWT its signature, which a body holding the whole
    token holds too (one search, for the shorter needle), else all of it; parts under 16 bytes are too common to
    mean anything."""
    if secret.count(".") == 2:
        signature = secret.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            return (signature.encode(),)
    return (secret.encode(),) if len(secret) >= 16 else ()


def reflects(body: bytes | None, needles: Sequence[bytes], limit: int = SCAN_LIMIT) -> bool:
    """Whether the body contains one of ``needles`` (``echoes`` of the secrets)."""
    if not body or len(body) > limit:
        return False
    for needle in needles:  # noqa: SIM110 (a loop: no generator for the one or two needles there are)
        if body.find(needle) >= 0:  # not ``in``: on bytes it first tries the needle as an integer (an exception)
            return True
    return False
