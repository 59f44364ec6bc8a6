"""validate-client-certificate: the certificate the client presented on its TLS connection to the proxy
(``context.Request.Certificate``, from mitmproxy's ``request_client_cert``) against the policy's rules and identities.

The rules: validity dates against the wall clock (``validate-not-before``/``-not-after``), a chain to a trusted CA
(``validate-trust``: the rules file's ``certificates:`` entries with ``ca: true`` stand for the CA certificates
uploaded to APIM; intermediates come from the client's chain), and at least one ``<identity>`` whose every claim
matches. ``validate-revocation`` is not checked: no CRL or OCSP responder is reachable from a loopback-only proxy, and
the trace says so. APIM documents neither the status nor the body of a failure: apim-mi answers 401
``{"statusCode": 401, "message": "Invalid client certificate."}`` with the reason in ``context.LastError.Message``
and the trace (inferred, marked unverified).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...clientcerts import CertificateError, PresentedCertificate, load_ca, load_file
from ..engine import UNVERIFIED, PolicyRun, Scope
from ..model import Statement
from ._common import ResponseError, json_response

POLICY = "validate-client-certificate"
PUBLIC_MESSAGE = "Invalid client certificate."
_RDN = re.compile(r'\s*([A-Za-z0-9][\w.-]*)\s*=\s*("(?:[^"]|"")*"|(?:\\.|[^,\\])*)\s*(?:,|$)')
_SAME_NAMES = {"S": "ST", "EMAILADDRESS": "E", "EMAIL": "E"}


def dn_parts(text: str) -> frozenset[tuple[str, str]]:
    """A distinguished name as a set of (TYPE, value): APIM's examples write it in either order, and a value with a
    comma in double quotes (``O="Contoso, Inc."``)."""
    parts = set()
    for match in _RDN.finditer(text):
        value = match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('""', '"')
        else:
            value = re.sub(r"\\(.)", r"\1", value)
        kind = match.group(1).upper()
        parts.add((_SAME_NAMES.get(kind, kind), value.lower()))
    return frozenset(parts)


def _flag(stmt: Statement, name: str, default: bool) -> bool:
    value = stmt.attr(name)
    return default if value is None else value.strip().lower() == "true"


def _issued(child: Any, issuer: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # a signature that fails, or a name or key that does not fit
        return False
    return True


def _settings_certs(run: PolicyRun) -> dict[str, list[Any]]:
    """The rules file's certificates (id → certificates): CA entries and the leaf of the others."""
    from cryptography import x509

    out: dict[str, list[Any]] = {}
    for key, entry in (run.services.settings.get("certificates") or {}).items():
        path = Path(entry["path"])
        try:
            if entry.get("ca"):
                out[key] = load_ca(path)
            else:
                out[key] = [x509.load_pem_x509_certificate(load_file(path, entry.get("password")).cert_pem)]
        except CertificateError:  # checked when the rules loaded; a file that went since is no issuer
            continue
    return out


def _trust_failure(cert: PresentedCertificate, anchors: list[Any]) -> str | None:
    """Why no chain leads from the leaf to a trusted CA, or None (intermediates from the client's chain)."""
    if not anchors:
        return "No CA certificate is trusted (declare one under certificates: with ca: true)."
    current, pool = cert.chain[0], list(cert.chain[1:])
    for _ in range(10):
        if any(a == current or _issued(current, a) for a in anchors):
            return None
        parent = next((c for c in pool if _issued(current, c)), None)
        if parent is None:
            break
        pool.remove(parent)
        current = parent
    return "The certificate chain cannot be built up to a trusted CA."


def _issuer_of(cert: PresentedCertificate, candidates: list[Any]) -> Any | None:
    leaf = cert.chain[0]
    return next((c for c in candidates if _issued(leaf, c)), None)


def _identity_mismatch(cert: PresentedCertificate, identity: Statement, known: dict[str, list[Any]]) -> str | None:
    """The first claim of ``identity`` the certificate does not have, or None when it has them all."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    leaf = cert.chain[0]
    checks: list[tuple[str, bool]] = []
    for name in identity.attrs:  # undeclared attributes are load errors: only the documented ones reach here
        want = (identity.attr(name) or "").strip()
        if name == "thumbprint":
            checks.append((name, want.upper() == cert.thumbprint))
        elif name == "serial-number":
            checks.append((name, want.upper().lstrip("0") == cert.serial_number.lstrip("0")))
        elif name == "common-name":
            names = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
            checks.append((name, any(str(n).lower() == want.lower() for n in names)))
        elif name == "subject":
            checks.append((name, dn_parts(want) == dn_parts(cert.subject)))
        elif name == "issuer-subject":
            checks.append((name, dn_parts(want) == dn_parts(cert.issuer)))
        elif name == "dns-name":
            try:
                dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                    x509.DNSName)  # fmt: skip
            except x509.ExtensionNotFound:
                dns = []
            checks.append((name, any(d.lower() == want.lower() for d in dns)))
        elif name == "issuer-thumbprint":
            issuer = _issuer_of(cert, [*cert.chain[1:], *(c for cs in known.values() for c in cs)])
            thumb = issuer.fingerprint(hashes.SHA1()).hex().upper() if issuer is not None else None
            checks.append((name, thumb == want.upper()))
        elif name == "issuer-certificate-id":
            checks.append((name, _issuer_of(cert, known.get(want, [])) is not None))
    return next((f"{name} does not match" for name, ok in checks if not ok), None)


def _failure(run: PolicyRun, stmt: Statement, cert: PresentedCertificate | None) -> str | None:
    if cert is None:
        return "The client did not present a certificate."
    now = datetime.fromtimestamp(run.services.state.wall_clock(), UTC).replace(tzinfo=None)
    if _flag(stmt, "validate-not-before", True) and now < cert.not_before:
        return f"The certificate is not valid before {cert.not_before:%Y-%m-%dT%H:%M:%SZ}."
    if _flag(stmt, "validate-not-after", True) and now > cert.not_after:
        return f"The certificate expired at {cert.not_after:%Y-%m-%dT%H:%M:%SZ}."
    known = _settings_certs(run)
    if _flag(stmt, "validate-trust", True):
        anchors = [c for key, cs in known.items() for c in cs
                   if (run.services.settings.get("certificates") or {})[key].get("ca")]  # fmt: skip
        problem = _trust_failure(cert, anchors)
        if problem:
            return problem
    identities = [i for group in stmt.children_named("identities") for i in group.children_named("identity")]
    if not identities:
        return None
    mismatches = [_identity_mismatch(cert, i, known) for i in identities]
    if any(m is None for m in mismatches):
        return None
    return "The certificate matches none of the identities (" + "; ".join(
        f"identity {n}: {m}" for n, m in enumerate(mismatches, 1)) + ")."  # fmt: skip


async def validate_client_certificate(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    cert = run.context.request.certificate
    problem = _failure(run, stmt, cert)
    subject = f" ({cert.subject}, thumbprint {cert.thumbprint})" if cert is not None else ""
    if _flag(stmt, "validate-revocation", True) and problem is None:
        run.trace.add(scope.section, POLICY, {"message": "Revocation is not checked: no CRL or OCSP responder is "
                                              "reachable from the proxy's machine.", **UNVERIFIED})  # fmt: skip
    if problem is None:
        run.trace.add(scope.section, POLICY, {"message": f"The client certificate{subject} is valid.", **UNVERIFIED})
        return
    run.trace.add(scope.section, POLICY, {"message": f"{problem}{subject}", **UNVERIFIED})
    if _flag(stmt, "ignore-error", False):
        return
    raise ResponseError(POLICY, problem, "ClientCertificateInvalid", json_response(401, PUBLIC_MESSAGE))


HANDLERS = {POLICY: validate_client_certificate}
