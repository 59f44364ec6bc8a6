"""validate-client-certificate: the certificate the client presents to the proxy (context.Request.Certificate)
against validity dates, a CA from the rules file and identities, through the engine and through a real mitmdump
that asks curl for its certificate (request_client_cert)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from apim_mi.clientcerts import PresentedCertificate
from apim_mi.policy import engine
from apim_mi.policy.gateway import GatewayState
from proxy import curl, write_rules
from test_statements import body_json, entries, make_run, policies

NOW = 1_800_000_000.0  # 2027-01-15: inside trustme's validity window (it issues from 2000 to 3000)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import trustme
    from cryptography import x509

    d = tmp_path_factory.mktemp("clientcert")
    ca, other = trustme.CA(organization_name="Contoso CA"), trustme.CA()
    leaf = ca.issue_cert("orders.contoso.test", common_name="orders-client", organization_name="Contoso, Inc.")
    stranger = other.issue_cert("stranger.test", common_name="stranger")
    ca.cert_pem.write_to_path(d / "ca.pem")
    leaf.private_key_and_cert_chain_pem.write_to_path(d / "client.pem")
    stranger.private_key_and_cert_chain_pem.write_to_path(d / "stranger.pem")

    def presented(issued_cert: Any) -> PresentedCertificate:
        return PresentedCertificate.of([x509.load_pem_x509_certificate(p.bytes()) for p in issued_cert.cert_chain_pems])

    return {"dir": d, "leaf": presented(leaf), "stranger": presented(stranger),
            "settings": {"certificates": {"contoso-ca": {"path": str(d / "ca.pem"), "ca": True}}}}  # fmt: skip


async def check(policy: str, cert: PresentedCertificate | None, issued: dict[str, Any],
                wall: float = NOW) -> engine.PolicyRun:  # fmt: skip
    run = make_run(policies(policy), settings=issued["settings"])
    run.services.state = GatewayState(wall_clock=lambda: wall)
    run.context.request.certificate = cert
    await engine.run_inbound(run)
    return run


async def test_a_trusted_certificate_matching_an_identity_passes(issued: dict[str, Any]) -> None:
    leaf: PresentedCertificate = issued["leaf"]
    assert leaf.subject.startswith("CN=orders-client, ") and len(leaf.thumbprint) == 40
    policy = f"""<validate-client-certificate>
      <identities>
        <identity thumbprint="0000000000000000000000000000000000000000" />
        <identity common-name="orders-client" dns-name="orders.contoso.test" issuer-certificate-id="contoso-ca"
                  subject='{leaf.subject}' serial-number="{leaf.serial_number.lower()}" />
      </identities>
    </validate-client-certificate>"""
    run = await check(policy, leaf, issued)
    assert run.response is None and run.forward
    messages = [e["message"] for e in entries(run, "validate-client-certificate")]
    assert messages[0].startswith("Revocation is not checked") and messages[1].endswith("is valid.")


def test_subjects_compare_as_sets_of_name_attributes() -> None:
    from apim_mi.policy.statements.clientcert import dn_parts

    reference = 'C=US, ST=Illinois, L=Chicago, O="Contoso, Inc.", CN=*.contoso.com'  # the reference's example
    assert dn_parts(reference) == dn_parts(r"CN=*.contoso.com, O=Contoso\, Inc., L=Chicago, S=Illinois, C=US")
    assert dn_parts(reference) != dn_parts('C=US, O="Contoso, Inc.", CN=*.contoso.com')


async def test_failures_answer_401_with_the_reason_in_last_error(issued: dict[str, Any]) -> None:
    missing = await check("<validate-client-certificate />", None, issued)
    assert missing.response.status_code == 401
    assert body_json(missing.response) == {"statusCode": 401, "message": "Invalid client certificate."}
    assert missing.context.last_error.reason == "ClientCertificateInvalid"
    assert missing.context.last_error.message == "The client did not present a certificate."

    untrusted = await check("<validate-client-certificate />", issued["stranger"], issued)
    assert untrusted.context.last_error.message == "The certificate chain cannot be built up to a trusted CA."
    assert (await check('<validate-client-certificate validate-trust="false" />', issued["stranger"], issued)
            ).response is None  # fmt: skip

    expired = await check("<validate-client-certificate />", issued["leaf"], issued, wall=33_000_000_000.0)
    assert expired.context.last_error.message.startswith("The certificate expired at ")
    early = await check("<validate-client-certificate />", issued["leaf"], issued, wall=0.0)
    assert early.context.last_error.message.startswith("The certificate is not valid before ")

    wrong = await check('<validate-client-certificate><identities><identity common-name="billing" /><identity '
                        'issuer-subject="CN=Someone Else" /></identities></validate-client-certificate>',
                        issued["leaf"], issued)  # fmt: skip
    assert wrong.context.last_error.message == ("The certificate matches none of the identities (identity 1: "
                                                "common-name does not match; identity 2: issuer-subject does not "
                                                "match).")  # fmt: skip
    ignored = await check('<validate-client-certificate ignore-error="true" />', None, issued)
    assert ignored.response is None and ignored.forward


async def test_expressions_read_the_certificate_as_x509certificate2(issued: dict[str, Any]) -> None:
    """The members the reference's client-certificate examples use (api-management-howto-mutual-certificates-for-
    clients): Thumbprint, Issuer, SubjectName.Name, NotAfter."""
    leaf: PresentedCertificate = issued["leaf"]
    policy = ('<set-variable name="who" value="@(context.Request.Certificate.SubjectName.Name + \'|\' + '
              'context.Request.Certificate.IssuerName.Name + \'|\' + context.Request.Certificate.NotAfter.Year)" />'
              '<choose><when condition="@(context.Request.Certificate == null || context.Request.Certificate'
              f'.Thumbprint != &quot;{leaf.thumbprint}&quot;)"><return-response><set-status code="403" />'
              "</return-response></when></choose>")  # fmt: skip
    run = await check(policy, leaf, issued)
    assert run.response is None
    assert run.context.variables["who"] == f"{leaf.subject}|{leaf.issuer}|{leaf.not_after.year}"
    assert (await check(policy.replace(leaf.thumbprint, "00"), leaf, issued)).response.status_code == 403


MTLS_ROUTE = """<policies><inbound>
  <validate-client-certificate>
    <identities><identity common-name="orders-client" issuer-certificate-id="contoso-ca" /></identities>
  </validate-client-certificate>
  <return-response><set-status code="200" reason="OK" />
    <set-body>@(context.Request.Certificate.Subject + "|" + context.Request.Certificate.Thumbprint)</set-body>
  </return-response>
</inbound><backend /><outbound /><on-error /></policies>"""


def _mtls_rules(tmp_path: Path, d: Path, host: str) -> Path:
    """MTLS_ROUTE on /mtls (and ``host``, e.g. ``'host: "127.0.0.1:9", '``), trusting the issued test CA."""
    (tmp_path / "mtls.xml").write_text(MTLS_ROUTE)
    return write_rules(tmp_path, f"""
        certificates:
          contoso-ca: {{path: {d / "ca.pem"}, ca: true}}
        rules:
          - {{name: mtls, match: {{{host}path: /mtls}}, policy: mtls.xml}}
    """)


def test_curl_presents_its_certificate_through_mitmdump(tmp_path: Path, emu: Any, md_factory: Any,
                                                        issued: dict[str, Any]) -> None:  # fmt: skip
    """HTTPS through the proxy: mitmproxy asks the client for a certificate (the addon turns request_client_cert on
    because a rule uses the policy), and the policy sees the one curl presents."""
    d: Path = issued["dir"]
    rules = _mtls_rules(tmp_path, d, 'host: "127.0.0.1:9", ')
    proxy = md_factory(emu, rules, "--set", "connection_strategy=lazy")  # the gateway answers: no upstream
    proxy.wait_for("request_client_cert turned on")
    tls = ["-x", proxy.url, "--cacert", str(tmp_path / "confdir" / "mitmproxy-ca-cert.pem")]
    status, body = curl(*tls, "--cert", str(d / "client.pem"), "https://127.0.0.1:9/mtls")
    leaf: PresentedCertificate = issued["leaf"]
    assert (status, body) == (200, f"{leaf.subject}|{leaf.thumbprint}")
    assert curl(*tls, "https://127.0.0.1:9/mtls") == (401, {"statusCode": 401, "message": "Invalid client "
                                                             "certificate."})  # fmt: skip
    status, body = curl(*tls, "--cert", str(d / "stranger.pem"), "https://127.0.0.1:9/mtls")
    assert status == 401


def test_reverse_mode_asks_a_tls_client_for_its_certificate(tmp_path: Path, emu: Any, md_factory: Any,
                                                             issued: dict[str, Any]) -> None:  # fmt: skip
    """A reverse proxy the client reaches over TLS (https://proxy/…) asks for the certificate as well."""
    d: Path = issued["dir"]
    rules = _mtls_rules(tmp_path, d, "")
    proxy = md_factory(emu, rules, "--mode", "reverse:https://127.0.0.1:9", "--set", "connection_strategy=lazy")
    url = f"https://127.0.0.1:{proxy.port}/mtls"
    status, body = curl("-k", "--cert", str(d / "client.pem"), url)  # -k: the proxy's certificate is not the point
    leaf: PresentedCertificate = issued["leaf"]
    assert (status, body) == (200, f"{leaf.subject}|{leaf.thumbprint}")
    assert curl("-k", url)[0] == 401
