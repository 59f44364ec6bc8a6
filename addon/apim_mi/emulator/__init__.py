"""Local managed-identity emulator: the wire protocols azure-identity speaks, on loopback, with signed JWTs.

Endpoints (``<url>`` is what :meth:`Emulator.start` returns):

* ``GET <url>/metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=|object_id=|msi_res_id=|
  resource_id=]`` with ``Metadata: true`` -- IMDS. Point azure-identity at it with
  ``AZURE_POD_IDENTITY_AUTHORITY_HOST=<url>``.
* ``GET <url>/msi/token?api-version=2019-08-01&resource=R[&client_id=…]`` with ``X-IDENTITY-HEADER: <secret>`` --
  App Service. ``IDENTITY_ENDPOINT=<url>/msi/token`` and ``IDENTITY_HEADER=<secret>``.
* ``POST <authority>/{tenant}/oauth2/v2.0/token`` -- Entra's token endpoint (client credentials with a client secret,
  a certificate assertion, or a federated assertion: a managed-identity token for ``api://AzureADTokenExchange`` or
  the workload-identity service-account token), on the HTTPS listener started with ``https_port`` (``<authority>``
  is ``authority_url``; its certificate comes from the local CA ``ca_pem``). ``tenant`` is the emulator's tenant or
  one of ``other_tenants`` (cross-tenant app tokens). See :mod:`apim_mi.emulator.entra`.
* ``GET <url>/{tenant}/discovery/v2.0/keys``, ``/{tenant}/discovery/keys`` (``tenant`` may also be ``common`` or
  ``organizations``) -- JWKS.
* ``GET <url>/{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/.well-known/openid-configuration`` --
  OIDC discovery; ``issuer`` is the tokens' ``iss`` (``https://sts.windows.net/<tenant>/``) and ``jwks_uri`` is on
  the emulator.

Admin API (answers loopback clients only; 403 otherwise):

* ``GET  /_emulator/health`` -- ``{"status": "ok", "url", "tenant_id"}``
* ``GET  /_emulator/stats`` -- ``{"total_requests", "token_requests": {"<identity>|<resource>": n},
  "issued_count", "issued_tokens": [...], "requests": [{"time", "protocol", "method", "path", "query", "headers",
  "identity", "resource", "status", "fault"}], "faults_pending", "jwks_requests"}``
* ``GET  /_emulator/config`` -- the effective configuration (identities, resources, lifetime …)
* ``POST /_emulator/config`` -- JSON object with any of ``token_lifetime`` (alias ``lifetime``), ``latency_ms``
  (alias ``latency``), ``resources`` (list, or null = any), ``refresh_in`` (int or null); replies with the new
  configuration (400 on invalid values)
* ``POST /_emulator/faults`` -- a JSON list of fault specs (or one spec; see :mod:`apim_mi.emulator.faults`) appended
  to the queue; ``DELETE /_emulator/faults`` clears it
* ``POST /_emulator/reset`` -- forget counters, request log, issued tokens and pending faults, and undo runtime
  configuration changes (back to the configuration the emulator was created with)

Counters: ``total_requests`` counts every request to a token endpoint; ``token_requests[(identity, resource)]``
counts only those that passed the protocol's header check (so a chain probe without ``Metadata`` is not a token
request), keyed ``"<identity>|<resource>"`` where identity is ``"system"`` or the identity's client id.
"""

from .config import (
    DEFAULT_APP_CLIENT_ID,
    DEFAULT_LIFETIME,
    DEFAULT_OTHER_TENANT_ID,
    DEFAULT_PORT,
    DEFAULT_TENANT_ID,
    EXCHANGE_AUDIENCES,
    SYSTEM,
    WELL_KNOWN_RESOURCES,
    WORKLOAD_ISSUER,
    WORKLOAD_SUBJECT,
    AppRegistration,
    EmulatorConfig,
    FederatedCredential,
    Identity,
    default_system_identity,
    default_user_identities,
    parse_identity,
)
from .faults import Fault, FaultKind
from .server import MANAGED_IDENTITY_ENV_VARS, Emulator, EmulatorStats, RequestRecord, is_loopback_host
from .thread import EmulatorThread
from .tokens import MintedToken, SigningKey, TokenMinter

__all__ = [
    "DEFAULT_APP_CLIENT_ID",
    "DEFAULT_LIFETIME",
    "DEFAULT_OTHER_TENANT_ID",
    "DEFAULT_PORT",
    "DEFAULT_TENANT_ID",
    "EXCHANGE_AUDIENCES",
    "MANAGED_IDENTITY_ENV_VARS",
    "SYSTEM",
    "WELL_KNOWN_RESOURCES",
    "WORKLOAD_ISSUER",
    "WORKLOAD_SUBJECT",
    "AppRegistration",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "EmulatorThread",
    "Fault",
    "FaultKind",
    "FederatedCredential",
    "Identity",
    "MintedToken",
    "RequestRecord",
    "SigningKey",
    "TokenMinter",
    "default_system_identity",
    "default_user_identities",
    "is_loopback_host",
    "parse_identity",
]
