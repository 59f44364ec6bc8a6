"""Why did the backend reject the token? Pure diagnosis of WWW-Authenticate challenges, as real services send them."""

from __future__ import annotations

import pytest
from apim_mi.diagnostics import (
    diagnose_rejection,
    echoes,
    expected_audiences,
    near_miss,
    parse_www_authenticate,
    reflects,
    rejected_audience,
)

GUID = "00000000-0000-0000-0000-00000000a11c"
DEMO = (
    'Bearer realm="apim-mi demo backend", error="invalid_token", error_description="The audience \'' + GUID
    + "' is invalid; expected 'api://" + GUID + "', 'https://orders.contoso.test'\", resource_id=\"api://" + GUID + '"'
)  # fmt: skip
EASY_AUTH = (
    'Bearer realm="orders.azurewebsites.net" authorization_uri="https://login.windows.net/5ca1ab1e-0000-4000-8000-'
    f'000000000001/oauth2/authorize" resource_id="{GUID}"'
)
STORAGE = "Bearer authorization_uri=https://login.microsoftonline.com/t/oauth2/authorize resource_id=https://storage.azure.com"
KEY_VAULT = 'Bearer authorization="https://login.windows.net/t", resource="https://vault.azure.net"'
KEY_VAULT_SCOPE = 'Bearer authorization="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default"'
JWT_BEARER = 'Bearer error="invalid_token", error_description="The audience \'api://orders\' is invalid"'
DEFAULT_SUFFIX = "a '/.default' suffix (that is a scope; resource takes the bare audience)"
IDX10214 = (
    'Bearer error="invalid_token", error_description="IDX10214: Audience validation failed. Audiences: '
    "'https://orders.contoso.test/'. Did not match: validationParameters.ValidAudience: 'null' or "
    "validationParameters.ValidAudiences: 'https://orders.contoso.test, api://orders'.\""
)


def test_parse_comma_space_and_unquoted_forms() -> None:
    (demo,) = parse_www_authenticate([DEMO])
    assert demo.scheme == "Bearer" and demo.params["error"] == "invalid_token"
    assert demo.params["resource_id"] == f"api://{GUID}"
    (easy,) = parse_www_authenticate([EASY_AUTH])
    assert easy.params["realm"] == "orders.azurewebsites.net" and easy.params["resource_id"] == GUID
    (storage,) = parse_www_authenticate([STORAGE])
    assert storage.params["resource_id"] == "https://storage.azure.com"
    two = parse_www_authenticate(['Basic realm="x", Bearer realm="y", error="invalid_token"'])
    assert [c.scheme for c in two] == ["Basic", "Bearer"] and two[1].params == {"realm": "y", "error": "invalid_token"}
    (escaped,) = parse_www_authenticate([r'Bearer error_description="a \"quoted\" word"'])
    assert escaped.params["error_description"] == 'a "quoted" word'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (DEMO, [f"api://{GUID}", "https://orders.contoso.test"]),
        (EASY_AUTH, [GUID]),
        (STORAGE, ["https://storage.azure.com"]),
        (KEY_VAULT, ["https://vault.azure.net"]),
        (KEY_VAULT_SCOPE, ["https://vault.azure.net"]),
        (JWT_BEARER, []),
        (IDX10214, ["https://orders.contoso.test", "api://orders"]),
        ('Bearer error_description="... ValidAudiences: \'[PII of type \'System.String\' is hidden]\'"', []),
    ],
)
def test_expected_audiences(header: str, expected: list[str]) -> None:
    assert expected_audiences(parse_www_authenticate([header])) == expected


def test_rejected_audience() -> None:
    assert rejected_audience(parse_www_authenticate([JWT_BEARER])) == "api://orders"
    assert rejected_audience(parse_www_authenticate([IDX10214])) == "https://orders.contoso.test/"
    assert rejected_audience(parse_www_authenticate([EASY_AUTH])) is None


@pytest.mark.parametrize(
    ("actual", "expected", "diffs"),
    [
        (GUID, f"api://{GUID}", ["the 'api://' prefix"]),
        (f"api://{GUID}", GUID, ["the 'api://' prefix"]),
        ("https://orders.contoso.test/", "https://orders.contoso.test", ["a trailing slash"]),
        ("https://management.azure.com", "https://management.azure.com/", ["a trailing slash"]),
        ("https://Orders.contoso.test", "https://orders.contoso.test", ["letter case"]),
        (f"API://{GUID.upper()}/", GUID, ["the 'api://' prefix", "a trailing slash", "letter case"]),
        ("https://vault.azure.net/.default", "https://vault.azure.net", [DEFAULT_SUFFIX]),
        ("https://orders.contoso.test", "https://orders.contoso.test", None),
        ("https://orders.contoso.test", "https://billing.contoso.test", None),
        ("api://orders", "api://orders2", None),
    ],
)
def test_near_miss(actual: str, expected: str, diffs: list[str] | None) -> None:
    assert near_miss(actual, expected) == diffs


def test_diagnose_demo_backend_near_miss() -> None:
    (msg,) = diagnose_rejection(401, [DEMO], [GUID])
    assert msg.startswith(f"Audience near miss: the token's audience is '{GUID}' but the backend expects 'api://{GUID}'")
    assert "the 'api://' prefix" in msg and f'resource="api://{GUID}"' in msg


def test_diagnose_easy_auth_near_miss_from_resource_id() -> None:
    (msg,) = diagnose_rejection(401, [EASY_AUTH], [f"api://{GUID}"])
    assert "differ only by the 'api://' prefix" in msg


def test_diagnose_idx10214_trailing_slash() -> None:
    (msg,) = diagnose_rejection(401, [IDX10214], ["https://orders.contoso.test/"])
    assert "only by a trailing slash" in msg


def test_diagnose_plain_mismatch_names_what_the_backend_expects() -> None:
    (msg,) = diagnose_rejection(401, [STORAGE], ["https://vault.azure.net"])
    assert msg == ("The backend expects audience 'https://storage.azure.com' but the token's audience is "
                   "'https://vault.azure.net'. Set the policy's resource (or the rule's scope, plus '/.default') to "
                   "what the backend expects.")


def test_diagnose_right_audience_other_cause() -> None:
    header = ('Bearer error="invalid_token", error_description="The issuer \'https://sts.windows.net/x/\' is '
              'invalid", resource_id="https://orders.contoso.test"')
    (msg,) = diagnose_rejection(401, [header], ["https://orders.contoso.test"])
    assert "although its audience 'https://orders.contoso.test' is one it accepts: The issuer" in msg


def test_diagnose_403_and_unparseable_and_nothing() -> None:
    (forbidden,) = diagnose_rejection(403, ['Bearer error="insufficient_scope"'], ["https://x"])
    assert "(403)" in forbidden and "app role" in forbidden
    (raw,) = diagnose_rejection(401, ["Negotiate"], ["https://x"])
    assert raw.endswith("WWW-Authenticate: Negotiate")
    (bare,) = diagnose_rejection(401, [], ["https://x"])
    assert "without a WWW-Authenticate header" in bare
    assert diagnose_rejection(200, [DEMO], [GUID]) == []
    assert diagnose_rejection(401, [DEMO], []) == []  # no token of ours: not our business
    assert diagnose_rejection(401, [DEMO], [f"api://{GUID}"]) == [
        f"The backend rejected the managed identity token although its audience 'api://{GUID}' is one it accepts: "
        f"The audience '{GUID}' is invalid; expected 'api://{GUID}', 'https://orders.contoso.test' (check "
        "issuer/tenant, expiry, and the backend's allowed client applications)."
    ]


def test_long_headers_are_cut() -> None:
    (msg,) = diagnose_rejection(401, ["Custom " + "x" * 1000], ["https://x"])
    assert len(msg) < 400 and msg.endswith("…")


def test_reflected_token_in_a_body() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly94In0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    needles = echoes(token)
    assert needles == (b"c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",)  # the signature: a body with the whole token has it too
    assert echoes("not-a-jwt-but-long-enough") == (b"not-a-jwt-but-long-enough",)
    assert echoes("a.b.short") == () and echoes("header.payload.sig") == (b"header.payload.sig",)
    assert reflects(b'{"authorization": "Bearer ' + token.encode() + b'"}', needles)
    assert reflects(b"sig only: c2lnbmF0dXJlLW9mLXRoZS10b2tlbg", needles)
    assert not reflects(b'{"claims": {"aud": "api://x"}}', needles)
    assert not reflects(None, needles) and echoes("") == () and echoes("short.a.b") == ()
    assert not reflects(token.encode(), needles, limit=10)  # too big to scan
