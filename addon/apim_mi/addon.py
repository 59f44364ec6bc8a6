"""The mitmproxy addon: options, hooks and commands that run the rules' policies on matching flows.

Fail closed is the rule for every matched flow: a token failure, a policy error or a bug in this addon answers
APIM's 500 instead of letting mitmproxy forward the request unchanged (which is what it does when a hook raises).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from mitmproxy import addonmanager, command, ctx, exceptions, http
from mitmproxy.utils import human

from . import clientcerts, diagnostics, fastpath, flowcontext, inspector, logs, streaming, uploads
from .credentials import CredentialSpec
from .errors import LoadError, PolicyError
from .matcher import Matcher
from .policy import engine
from .policy.ai import counts_tokens
from .policy.ai.usage import load_encoding
from .policy.gateway import GatewayState
from .policy.statements import core
from .rules import CREDENTIAL_SOURCES, Rule, RulesConfig, load_rules
from .tokens import Token, TokenKey, TokenProvider, azure_credential_factory
from .trace import METADATA_KEY, REDACTED, FlowRecord, Trace, scrub

log = logging.getLogger("apim_mi")

#: The error reason when the request that went upstream lacked a token the policy added.
NOT_SENT = "TokenNotSent"

# Environment variables that would make azure-identity pick another managed-identity source than the emulator.
_MI_ENV = (
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT",
    "MSI_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)  # fmt: skip


@dataclass(slots=True)
class _FlowState:
    """What the addon keeps in memory (never in flow.metadata) between a flow's hooks."""

    rule: Rule
    run: engine.PolicyRun
    started: float
    request_id: uuid.UUID | None = None  # the policy run's (context.RequestId); made a string when read
    redacted: bool = False
    #: apim-mi failed inside (outbound): what the summary, comment and log line say instead of the policy's outcome.
    failure: str = ""
    tap: streaming.Tap | None = None  # the answer streams through it
    answer: http.Response | None = None  # decided in responseheaders, given in response
    #: The policy ran in ``requestheaders`` (a streamed request body): the token is checked in ``request``.
    early: bool = False
    #: Whether the request that went upstream carried every injected token (None: not checked yet).
    sent: bool | None = None
    #: The request as it went upstream (or as received, when the policy answered): for the log line.
    seen: flowcontext.RequestSnapshot | None = None
    #: ignore_error let a request whose policy could not run on its streamed body go on as the client sent it.
    unchanged: bool = False
    #: The request's line was logged and counted (when it left); the flow's end only updates the summary.
    recorded: bool = False


@dataclass
class _Held:
    """A request of unknown length whose policy needs the body: parked at the sink until ``request`` shows whether
    mitmproxy buffered it (then the policy runs) or streamed it (then it fails closed)."""

    rule: Rule
    routed: Any
    destination: uploads.Destination


def _client_networks(specs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"mi_allow_clients: '{spec}' is not an IP address or CIDR network ({e})") from None
    return nets


class ApimMi:
    """Runs APIM policies (authentication-managed-identity first of all) on flows that match a rule."""

    name = "apim_mi"

    def __init__(self) -> None:
        self.config: RulesConfig | None = None
        self.matcher = Matcher([])
        self.tokens: TokenProvider | None = None
        self.credential: str | CredentialSpec = "default"
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.emulator: Any = None
        self._emulator_files: tempfile.TemporaryDirectory[str] | None = None
        self.demo_backend: Any = None
        self.counters: dict[str, int] = {"matched": 0, "injected": 0, "failed": 0, "refused": 0}
        self.metrics: Any = None  # apim_mi.metrics.Metrics while mi_metrics is set (policies: settings["metrics"])
        self._metrics_server: Any = None
        self._metrics_listen = ("127.0.0.1", 0)
        self._flows: dict[str, _FlowState | fastpath.Quick] = {}
        # Streamed request bodies (see uploads.py): flows whose policy ran in requestheaders, parked ones, and
        # those sent to the sink (where they were going, and the answer the client gets instead of the sink's).
        self._early: set[str] = set()
        self._held: dict[str, _Held] = {}
        self._diverted: dict[str, tuple[uploads.Destination, http.Response | None]] = {}
        self._body_uses: dict[int, tuple[Any, str | None, bool]] = {}
        self.sink = uploads.Sink()
        self._running = False
        self._startup_error = False
        self._ready: asyncio.Future[None] | None = None
        self._ready_seen: asyncio.Future[None] | None = None  # the start the fast path found complete
        #: Each rule's fast-path route (None: the engine path), by rule index, for the current rules and credential.
        self._routes: dict[int, tuple[Rule, fastpath.Route | None]] = {}
        self._carried_by_key: dict[TokenKey, fastpath.Carried] = {}
        #: secret -> (the secret as bytes, what of it an echoing answer would show): made once per token
        self._secret_forms: dict[str, tuple[bytes, tuple[bytes, ...]]] = {}
        #: secret -> ("Bearer <secret>" as bytes, that value redacted): the usual field redaction, made once per token
        self._bearer_forms: dict[str, tuple[bytes, bytes]] = {}
        self._request_ids = flowcontext.RequestIds()  # context.RequestId of each engine-path flow
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watched: dict[Path, float] = {}
        self._settings: dict[str, Any] = {}
        self._services_by_source: dict[str | CredentialSpec, engine.Services] = {}
        self.gateway = GatewayState()  # caches, counters, breakers, metrics: shared by every flow and rule
        self.inspector = inspector.Inspector()
        self.upstream_certs = clientcerts.UpstreamCertificates()
        # Options read on every flow, copied here by configure (ctx.options deep-copies a value on each read).
        self._redact_on = True
        self._trace_on = True
        self._ssl_insecure = False
        self._stream_limit: int | None = None
        self._stream_limit_text = ""
        self.requestheaders = self._on_requestheaders  # until configure knows whether a body may stream

    # -- options ---------------------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        # azure-identity logs every token request (INFO) and every failure with a full traceback (WARNING) into
        # mitmproxy's event log; the flow's own apim-mi line (and its trace) already carries the cause.
        logging.getLogger("azure").setLevel(logging.ERROR)
        logs.route(log)  # past mitmproxy's deprecated add_log bridge: one flow's log line is no extra hook event
        loader.add_option("mi_rules", str, "rules.yaml", "Rules file (.yaml, or .xml rules / a bare APIM <policies>).")
        loader.add_option(
            "mi_credential", str, "",
            f"Token source: {', '.join(CREDENTIAL_SOURCES)}; empty = what the rules file says, else 'default'.",
        )  # fmt: skip
        loader.add_option("mi_timeout", int, 10, "Seconds a request may wait for a token before failing closed.")
        loader.add_option("mi_refresh_before", int, 300, "Seconds before expiry to refresh a token in the background.")
        loader.add_option("mi_redact", bool, True, "Redact injected tokens once the flow completes (saved flows, UI).")
        loader.add_option("mi_trace", bool, True, "Record an APIM trace in each matched flow.")
        loader.add_option(
            "mi_allow_clients", Sequence[str], [],
            "Client networks (IP or CIDR) allowed to cause token injection besides loopback "
            "(and besides clients authenticated with --proxyauth).",
        )  # fmt: skip
        loader.add_option("mi_prefetch", bool, False, "Fetch every shorthand rule's token at startup.")
        loader.add_option(
            "mi_metrics", str, "",
            "host:port to serve Prometheus /metrics, /healthz and /readyz on (loopback and mi_allow_clients "
            "clients only); empty = off.",
        )  # fmt: skip
        loader.add_option(
            "mi_demo_backend", str, "",
            "host:port to run the demo JWT-validating backend on (for the out-of-the-box demo); empty = off.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except (ValueError, LoadError) as e:
            if self._running:
                raise exceptions.OptionsError(str(e)) from None
            # At startup a raise prints a traceback; one logged error makes mitmdump exit cleanly with rc=1.
            self._startup_error = True
            log.error("apim-mi: %s", e)

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "mi_credential" in updated and opts.mi_credential and opts.mi_credential not in CREDENTIAL_SOURCES:
            raise ValueError(
                f"mi_credential: unknown value '{opts.mi_credential}' (allowed: {', '.join(CREDENTIAL_SOURCES)})"
            )
        if "mi_timeout" in updated and opts.mi_timeout <= 0:
            raise ValueError("mi_timeout must be a positive number of seconds")
        if "mi_refresh_before" in updated and opts.mi_refresh_before < 0:
            raise ValueError("mi_refresh_before must be >= 0 seconds")
        if "mi_allow_clients" in updated:
            self.allowed_networks = _client_networks(opts.mi_allow_clients)
        if "mi_metrics" in updated:
            self._configure_metrics(opts.mi_metrics)
        if "mi_rules" in updated:
            self._load_rules()
            if self.config is not None and self.config.gateway is not None:
                from .sources.apiops.flows import connect_lazily

                connect_lazily(opts)
        if self.config is not None and updated & {"mi_rules", "mi_credential"}:
            new_credential = opts.mi_credential or self.config.credential or "default"
            if self._running and new_credential != self.credential:
                raise ValueError("mi_credential cannot change while the proxy runs; restart with the new value")
            self.credential = new_credential
            self._routes = {}
        if self.tokens is not None and updated & {"mi_timeout", "mi_refresh_before"}:
            self.tokens.timeout = float(opts.mi_timeout)
            self.tokens.refresh_before = float(opts.mi_refresh_before)
        if "mi_redact" in updated:
            self._redact_on = bool(opts.mi_redact)
        if "mi_trace" in updated:
            self._trace_on = bool(opts.mi_trace)
        if "ssl_insecure" in updated:
            self._ssl_insecure = bool(opts.ssl_insecure)
        if "stream_large_bodies" in updated:
            self._stream_limit_text = opts.stream_large_bodies or ""
            self._stream_limit = human.parse_size(self._stream_limit_text) if self._stream_limit_text else None
        self._arm_requestheaders()

    def _configure_metrics(self, spec: str) -> None:
        if self._running:
            raise ValueError("mi_metrics cannot change while the proxy runs; restart with the new value")
        if spec:
            from .metrics import Metrics, parse_listen

            self._metrics_listen = parse_listen(spec)
            self.metrics = Metrics()
        else:
            self.metrics = None

    def _load_rules(self) -> None:
        """Loads the rules file; on error the previous rules stay in force (the caller reports the error).

        The rules are frozen out of the garbage collector's reach afterwards: with 10 000 rules a full collection
        walked them for ~130 ms, a latency spike for every flow in flight. Unfrozen first, so rules a reload
        replaces can be collected."""
        path = Path(ctx.options.mi_rules)
        gc.unfreeze()
        try:
            config = load_rules(path)
            self.config = config
            self._settings = {**self._settings, **_config_settings(config)}
            self.gateway.subscriptions, self.gateway.loggers = config.subscriptions, config.loggers
            self.matcher = Matcher(config.rules)
            self._routes = {}
            if clientcerts.presented_upstream(config) and ctx.options.connection_strategy != "lazy":
                # the upstream TLS connection must open after the request hook chose the certificate
                log.info("apim-mi: authentication-certificate: connection_strategy set to lazy")
                ctx.options.update(connection_strategy="lazy")
            if clientcerts.validated_downstream(config) and not ctx.options.request_client_cert:
                log.info("apim-mi: validate-client-certificate: request_client_cert turned on")
                ctx.options.update(request_client_cert=True)
            self._body_uses = {}
            self._watched = {f: _mtime(f) for f in config.files}
        finally:
            gc.collect()
            gc.freeze()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def running(self) -> None:
        if self._startup_error:
            return
        self._running = True
        self._arm_requestheaders()  # every addon given at startup is loaded now
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._spawn(self._start())
        self._spawn(self._watch())
        if self.metrics is not None:
            self._spawn(self._serve_metrics())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self) -> None:
        """Embedded emulator / demo backend (if asked for), the token provider, the startup summary."""
        assert self._ready is not None
        try:
            # The tenant shown in a failed acquisition's "AAD Authority" (a token's own tid is used on success).
            settings: dict[str, Any] = {
                **(_config_settings(self.config) if self.config else {}),
                "tenant_id": os.environ.get("AZURE_TENANT_ID", ""),
            }
            entra: dict[str, str] = {}
            if self.credential == "emulator":
                entra = await self._start_emulator()
                settings["tenant_id"] = self.emulator.tenant_id
                settings["entra_authority"] = self.emulator.url  # validate-azure-ad-token's OpenID discovery
            if ctx.options.mi_demo_backend:
                await self._start_demo_backend(ctx.options.mi_demo_backend)
            timeout = float(ctx.options.mi_timeout)
            factory = azure_credential_factory(timeout, **entra)
            if self.metrics is not None:
                factory = self.metrics.timed(factory)
                settings["metrics"] = self.metrics
            self.tokens = TokenProvider(factory, timeout=timeout, refresh_before=float(ctx.options.mi_refresh_before))
            if self.metrics is not None:
                self.metrics.watch_tokens(self.tokens.status)
            self._settings = settings
            if self.config is not None and self.config.gateway is not None:  # Key Vault named values, now
                from .sources.apiops.flows import start

                await start(self.config.gateway, self.tokens, self.credential)
            self._log_summary()
            self._ready.set_result(None)
            if self.config is not None and counts_tokens(rule.policy for rule in self.config.rules):
                self._spawn(load_encoding(None))  # the tokenizer, before the first streamed answer needs it
            if ctx.options.mi_prefetch:
                await self._prefetch()
        except Exception as e:
            log.error("apim-mi: could not start: %s", e)
            if not self._ready.done():
                self._ready.set_exception(e)

    async def _start_emulator(self) -> dict[str, str]:
        """Starts the embedded emulator (IMDS, and Entra on HTTPS for app-registration credentials); returns the
        authority and CA bundle the Entra credentials need."""
        from .emulator import Emulator, EmulatorConfig

        self.emulator = Emulator(EmulatorConfig())
        await self.emulator.start(host="127.0.0.1", port=0, https_port=0)
        for var in _MI_ENV:
            os.environ.pop(var, None)
        os.environ.update(self.emulator.env("imds"))
        self._emulator_files = tempfile.TemporaryDirectory(prefix="apim-mi-emulator-")
        ca_file = Path(self._emulator_files.name) / "ca.pem"
        ca_file.write_bytes(self.emulator.ca_pem)
        return {"authority": self.emulator.authority_url, "connection_verify": str(ca_file)}

    async def _start_demo_backend(self, spec: str) -> None:
        from .backend import DemoBackend

        if self.emulator is None:
            raise ValueError("mi_demo_backend needs the emulator (mi_credential=emulator) to validate tokens")
        host, _, port = spec.rpartition(":")
        self.demo_backend = DemoBackend(
            jwks_uri=self.emulator.jwks_uri, issuer=self.emulator.issuer, audiences=self._demo_audiences()
        )
        await self.demo_backend.start(host or "127.0.0.1", int(port))

    def _demo_audiences(self) -> list[str]:
        """The demo backend accepts the audiences of the shorthand rules, so the demo works without extra setup."""
        assert self.config is not None
        out = []
        for rule in self.config.rules:
            for stmt in rule.policy.statements():
                if stmt.name == "authentication-managed-identity" and "resource" in stmt.attrs:
                    out.append(stmt.attrs["resource"].text)
        return out

    def _log_summary(self) -> None:
        assert self.config is not None
        who = "loopback clients"
        if self.allowed_networks:
            who += " and " + ", ".join(map(str, self.allowed_networks))
        if ctx.options.proxyauth:
            who += " and clients authenticated with --proxyauth"
        scope = "every request through the proxy" if self.config.applies_to_all else f"{len(self.config.rules)} rule(s)"
        log.info("apim-mi: %s loaded from %s; credential: %s", scope, self.config.path, self.credential)
        if self.config.gateway is not None:
            log.info("apim-mi: %s", self.config.gateway.summary())
        if self.emulator is not None:
            log.info("apim-mi: embedded managed-identity emulator at %s (tenant %s)", self.emulator.url,
                     self.emulator.tenant_id)
        if self.demo_backend is not None:
            log.info("apim-mi: demo backend (validates tokens) at %s", self.demo_backend.url)
        log.info("apim-mi: tokens are injected only for %s", who)
        if self._ssl_insecure:
            log.warning("apim-mi: ssl_insecure is on: upstream certificates are not verified, so no token goes to a "
                        "remote https:// host unless its rule sets allow_http: true")

    def _prefetch_keys(self) -> list[Any]:
        """The token of every authentication-managed-identity with a literal resource."""
        from .tokens import token_key

        assert self.config is not None
        keys = []
        for rule in self.config.rules:
            for stmt in rule.policy.statements():
                res = stmt.attrs.get("resource")
                if stmt.name == "authentication-managed-identity" and res is not None and not res.is_expression:
                    keys.append(token_key(self._source(rule), (stmt.attr("client-id") or ""), res.text))
        return keys

    async def _prefetch(self) -> None:
        from .tokens import TokenError

        assert self.tokens is not None
        for key in self._prefetch_keys():
            try:
                await self.tokens.get(key)
            except TokenError as e:
                log.warning("apim-mi: prefetch of %s for %s failed: %s", key.identity, key.resource, e.reason)

    async def _serve_metrics(self) -> None:
        from .metrics import MetricsServer

        host, port = self._metrics_listen
        self._metrics_server = MetricsServer(self.metrics, self.readiness, self._peer_allowed)
        try:
            port = await self._metrics_server.start(host, port)
        except OSError as e:
            log.error("apim-mi: cannot serve metrics on %s:%d: %s", host, port, e.strerror or e)
            return
        shown = f"[{host}]" if ":" in host else host
        log.info("apim-mi: metrics and health at http://%s:%d (/metrics, /healthz, /readyz)", shown, port)

    def readiness(self) -> Any:
        """Ready once the rules are loaded and the token provider runs; with mi_prefetch, once every literal
        resource's token is cached too (``/readyz``)."""
        from .metrics import Readiness

        ready = self._ready
        if self._startup_error or self.config is None:
            return Readiness(False, {"reason": "the rules did not load"})
        if ready is None or not ready.done():
            return Readiness(False, {"reason": "starting"})
        if ready.cancelled() or ready.exception() is not None:
            return Readiness(False, {"reason": f"could not start: {ready.exception()}"})
        detail: dict[str, Any] = {"rules": len(self.config.rules), "credential": str(self.credential)}
        if ctx.options.mi_prefetch and self.tokens is not None:
            cached = {(r["source"], r["identity"], r["resource"]) for r in self.tokens.status() if "expires_in_s" in r}
            missing = [f"{k.identity} {k.resource}" for k in self._prefetch_keys()
                       if (str(k.source), k.identity, k.resource) not in cached]  # fmt: skip
            if missing:
                return Readiness(False, {**detail, "reason": "tokens not cached yet", "missing": missing})
        return Readiness(True, detail)

    async def _watch(self) -> None:
        """Hot reload: polls the rules file and every policy/fragment file it uses, once a second."""
        while True:
            await asyncio.sleep(1.0)
            changed = [f for f, m in self._watched.items() if _mtime(f) != m]
            if changed:
                self.reload(reason=f"{changed[0].name} changed")

    def reload(self, reason: str = "mi.reload") -> bool:
        """Re-reads the rules; a broken file is reported and the last good rules stay in force."""
        previous = dict(self._watched)
        try:
            self._load_rules()
        except LoadError as e:
            self._watched = {f: _mtime(f) for f in previous}
            log.error("apim-mi: %s; keeping the previous rules (%s)", e, reason)
            if self.metrics is not None:
                self.metrics.reloaded(False)
            return False
        if self.metrics is not None:
            self.metrics.reloaded(True)
        assert self.config is not None
        log.info("apim-mi: rules reloaded (%s): %d rule(s) from %s", reason, len(self.config.rules), self.config.path)
        return True

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.tokens is not None:
            await self.tokens.close()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self.demo_backend is not None:
            await self.demo_backend.stop()
        if self.emulator is not None:
            await self.emulator.stop()
        if self._emulator_files is not None:
            self._emulator_files.cleanup()
        await self.sink.stop()

    def done(self) -> asyncio.Task[None] | None:
        """Sync on purpose: a script reload calls ``done`` synchronously. At shutdown mitmproxy awaits what a hook
        returns, so returning the cleanup task closes the credentials before the loop ends."""
        logs.unroute(log)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.create_task(self._shutdown())

    # -- flows ------------------------------------------------------------------------------------------------

    def _source(self, rule: Rule) -> str | CredentialSpec:
        return rule.credential or self.credential

    def _services(self, rule: Rule) -> engine.Services:
        """What the rule's policies get from outside the request: one ``Services`` per credential source, made again
        when the token provider or the settings change (both are replaced, never changed in place)."""
        source = self._source(rule)
        kept = self._services_by_source.get(source)
        if kept is None or kept.tokens is not self.tokens or kept.settings is not self._settings:
            assert self.tokens is not None
            kept = self._services_by_source[source] = engine.Services(self.tokens, source, settings=self._settings,
                                                                      state=self.gateway)  # fmt: skip
        return kept

    def _client_allowed(self, flow: http.HTTPFlow) -> bool:
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        return bool(flow.metadata.get("proxyauth")) or self._peer_allowed(peer)

    def _peer_allowed(self, peer: str) -> bool:
        """Loopback, or an address in mi_allow_clients."""
        if flowcontext.is_loopback(peer):
            return True
        try:
            addr = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allowed_networks)

    def _arm_requestheaders(self) -> None:
        """Offers mitmproxy the ``requestheaders`` hook only while a request body may stream: with
        stream_large_bodies, or when an addon that runs before apim-mi has a requestheaders hook of its own (it may set
        ``flow.request.stream``; mitmproxy's own addons never do). mitmproxy looks the hook up on every flow, so any
        other flow is spared one hook dispatch (its arguments gathered, the call, the result checked)."""
        if self._stream_limit is not None or self._earlier_requestheaders():
            self.requestheaders = self._on_requestheaders
        else:
            self.__dict__.pop("requestheaders", None)

    def _earlier_requestheaders(self) -> bool:
        """Whether an addon before apim-mi in mitmproxy's chain, other than mitmproxy's own, has a requestheaders
        hook (True when apim-mi is not found there: nothing is known, so the hook stays)."""
        try:
            chain = ctx.master.addons.chain
        except AttributeError:  # no master (a bare unit test)
            return True
        for addon in addonmanager.traverse(chain):
            if addon is self:
                return False
            if callable(getattr(addon, "requestheaders", None)) and not type(addon).__module__.startswith("mitmproxy."):
                return True
        return True

    #: mitmproxy's requestheaders hook, present only while a body may stream (``_arm_requestheaders``).
    requestheaders: Callable[[http.HTTPFlow], Awaitable[None] | None]

    def _on_requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Only for a body mitmproxy streams: its headers leave right after this hook, so the policy runs now (see
        uploads.py). Sync on purpose: any other flow costs one check, and mitmproxy awaits what is returned."""
        if self._stream_limit is None and not flow.request.stream:
            return None
        if flow.response or flow.error or not flow.live or self._startup_error or self.inspector.is_endpoint(flow):
            return None
        mode = uploads.streaming(flow.request, self._stream_limit)
        if mode is uploads.Streaming.NO:
            return None
        return self._requestheaders(flow, mode)

    async def _requestheaders(self, flow: http.HTTPFlow, mode: uploads.Streaming) -> None:
        await self.sink.start()  # once per process, on the first streamed request
        self._early.add(flow.id)  # from here on, an answer goes through the sink (see _respond)
        matched = await self._matched_rule(flow)
        if matched is None:
            if flow.id not in self._diverted:  # (a refused client or a matcher failure is answered via the sink)
                self._early.discard(flow.id)
            return
        rule, routed = matched
        need, lenient = self._body_use(rule)
        if mode is uploads.Streaming.MAYBE and need is not None and not lenient:
            # The body may stay buffered (then the policy runs in `request`) or be streamed once it passes the limit
            # (then its headers must not reach the backend): park the request at the sink until `request` tells.
            self._held[flow.id] = _Held(rule, routed, self.sink.divert(flow.request))
            return
        if need is not None and mode is uploads.Streaming.MAYBE:
            self._early.discard(flow.id)  # ignore_error: a streamed body is forwarded unchanged, checked in `request`
            return
        await self._guarded(flow, rule, routed, early=True)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync on purpose, like ``requestheaders``: a flow no rule matches, or one the fast path takes, costs no
        coroutine; the engine path (and an APIM instance's routing) is returned for mitmproxy to await."""
        if flow.id in self._early:
            return self._request_after_headers(flow)
        if flow.response or flow.error or not flow.live or self._startup_error:
            return None
        if self.inspector.answer(flow):  # http://apim-mi.trace/...: the trace endpoint, loopback clients only
            return None
        if self.config is not None and self.config.gateway is not None:
            return self._routed_request(flow)
        _, rule = self._match(flow)
        if rule is None or not self._admitted(flow, rule):
            return None
        return self._matched_request(flow, rule, None)

    async def _routed_request(self, flow: http.HTTPFlow) -> None:
        matched = await self._matched_rule(flow)
        if matched is not None:
            pending = self._matched_request(flow, *matched)
            if pending is not None:
                await pending

    def _matched_request(self, flow: http.HTTPFlow, rule: Rule, routed: Any) -> Awaitable[None] | None:
        if flow.request.stream:  # streamed by an addon after our requestheaders, or ignore_error with a body policy
            self._unprotected(flow, rule)
            return None
        if routed is None and self._quick_request(flow, rule):
            return None
        return self._guarded(flow, rule, routed, early=False)

    # -- the fast path (fastpath.py) --------------------------------------------------------------------------

    def _quick_request(self, flow: http.HTTPFlow, rule: Rule) -> bool:
        """The flow's policy only adds a token and nothing needs the engine: the cached token goes into the
        header and a ``Quick`` record is kept (False: the engine path runs instead)."""
        known = self._routes.get(rule.index)
        if known is None or known[0] is not rule:
            known = self._routes[rule.index] = (rule, fastpath.route(rule, self._source(rule)))
        route = known[1]
        ready = self._ready
        if route is None or (ready is not self._ready_seen and not self._ready_ok(ready)):
            return False
        req = flow.request
        data = req.data  # the raw values (mitmproxy's properties decode or look up on every access)
        fields = data.headers.fields
        if not fastpath.plain_request(fields):
            return False
        if self._insecure_transport(data.scheme, data.host, rule):
            return False
        began = time.perf_counter()
        assert self.tokens is not None
        token = self.tokens.cached(route.key, route.plan.resource)  # the hit counted only when the token is used here
        if token is None:
            return False
        carried, seen = self._carried(route.key, token), flowcontext.RequestSnapshot(req)
        quick = fastpath.Quick(route, carried, began, time.time(), data.timestamp_start, seen)
        data.headers.fields = quick.sent_fields = fastpath.with_token(fields, carried.field)
        quick.forwarded = time.perf_counter()
        self._flows[flow.id] = quick
        return True

    def _ready_ok(self, ready: asyncio.Future[None] | None) -> bool:
        """apim-mi started (the emulator, the token provider): remembered per start, asked on every flow."""
        if ready is None or not ready.done() or ready.cancelled() or ready.exception() is not None:
            return False
        self._ready_seen = ready
        return True

    def _quick_sent(self, flow: http.HTTPFlow, quick: fastpath.Quick) -> None:
        """The request left with the token (its headers are as the fast path left them): counted, logged, and
        the token taken out of the flow."""
        quick.checked = True
        route = quick.route
        rule_name = route.rule.name
        self._count("injected", rule_name)
        if logs.wanted(log, logging.INFO):
            _log_injected(flow, quick.seen, rule_name, route.identity, quick.carried.token.claims.get("aud", ""),
                          fastpath.OUTCOME)  # fmt: skip
        if self._redact_on:
            flow.request.data.headers.fields = fastpath.redacted(quick.sent_fields)

    def _quick_finish(self, flow: http.HTTPFlow, quick: fastpath.Quick) -> None:
        """The flow is over: its comment now, its summary and trace once something reads them."""
        now = time.perf_counter()
        resp = flow.response
        status = None
        if resp is not None:
            quick.answered = now
            status = resp.data.status_code
            quick.response = (status, resp.data.reason, resp.data.headers.fields)
        elapsed_ms = (now - quick.began) * 1000
        route = quick.route
        aud = quick.carried.token.claims.get("aud", "")
        flow.comment = _comment(route.rule.name, route.identity, aud, fastpath.OUTCOME, status, elapsed_ms, ())
        keys = ("summary", "trace") if self._trace_on else ("summary",)
        flow.metadata[METADATA_KEY] = FlowRecord(partial(_quick_document, quick, elapsed_ms, keys), keys)
        del self._flows[flow.id]

    def _carried(self, key: TokenKey, token: Token) -> fastpath.Carried:
        """``fastpath.carried`` for the token, kept per token key until the key's token changes (or is flushed)."""
        carried = self._carried_by_key.get(key)
        if carried is None or carried.token is not token:
            carried = self._carried_by_key[key] = fastpath.carried(token, self._forms(token.value))
        return carried

    def _full(self, flow: http.HTTPFlow, quick: fastpath.Quick) -> _FlowState:
        """A fast-path flow that needs the engine path from here on: the state that path would have by now."""
        request_id = self._request_ids.next()
        trace = quick.trace(request_id.hex)
        context = flowcontext.request_context(flow, request_id)[0]
        rule, plan, _, identity = quick.route
        services = self._services(rule)
        run = engine.PolicyRun(rule.policy, context, trace, services, rule_name=rule.name, forward=True,
                               forward_timeout=plan.timeout)  # fmt: skip
        claims = quick.carried.token.claims
        run.injections.append(engine.Injection(fastpath.HEADER, identity, plan.resource, claims))
        state = _FlowState(rule, run, quick.began, request_id, seen=quick.sent())
        if quick.checked:
            state.sent = state.recorded = True
            state.redacted = self._redact_on
        self._flows[flow.id] = state
        return state

    async def _matched_rule(self, flow: http.HTTPFlow) -> tuple[Rule, Any] | None:
        """The flow's rule (and its APIOps route, if an API answered), for a client allowed to use it; a client that
        is not is answered 403."""
        matched, rule = self._match(flow)
        if not matched:
            return None
        routed = None
        if rule is None and self.config is not None and self.config.gateway is not None:
            from .sources.apiops.flows import route_flow  # an APIM instance answers what no rule matched

            if self._ready is not None and not self._ready.done():
                await asyncio.wait({self._ready}, timeout=ctx.options.mi_timeout)
            try:
                routed = await route_flow(self.config.gateway, flow, self.tokens, self.credential)
            except Exception as e:  # never forward a gateway host's request unrouted: fail closed
                self._fail_closed(flow, None, f"APIM gateway routing failed: {e!r}")
                return
            rule = routed.rule if routed is not None else None
        if rule is None or not self._admitted(flow, rule):
            return None
        return rule, routed

    def _match(self, flow: http.HTTPFlow) -> tuple[bool, Rule | None]:
        """(whether matching worked, the flow's rule); a matcher bug must not forward a flow that may match, so it
        fails closed."""
        try:
            return True, self.matcher.match_line(flowcontext.line_of(flow))
        except Exception as e:
            self._fail_closed(flow, None, f"rule matching failed: {e!r}")
            return False, None

    def _admitted(self, flow: http.HTTPFlow, rule: Rule) -> bool:
        """Counts the match; a client that may not use the rules is answered 403."""
        self._count("matched", rule.name)
        if self._client_allowed(flow):
            return True
        self._count("refused", rule.name)
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else "?"
        message = (f"apim-mi: client {peer} may not use managed identity rules (allow it with mi_allow_clients "
                   "or use --proxyauth).")  # fmt: skip
        self._respond(flow, _error_response(403, message))
        log.warning("apim-mi: refused %s from %s: client not allowed", flowcontext.pretty_url(flow.request), peer)
        return False

    async def _guarded(self, flow: http.HTTPFlow, rule: Rule, routed: Any, early: bool) -> None:
        try:
            await self._run_inbound(flow, rule, routed, early)
        except Exception as e:  # fail closed on any bug, exactly as on a policy error
            log.exception("apim-mi: internal error while running rule '%s'", rule.name)
            self._fail_closed(flow, rule, f"internal error: {e!r}")

    async def _request_after_headers(self, flow: http.HTTPFlow) -> None:
        """``request`` for a flow handled in requestheaders: the whole body has been read (buffered) or sent."""
        held = self._held.pop(flow.id, None)
        if held is not None:
            if flow.request.stream:  # mitmproxy streamed it once it passed the limit: its headers went to the sink
                self._diverted[flow.id] = (held.destination, None)
                await self._guarded(flow, held.rule, held.routed, early=True)
            else:  # buffered after all: the policy runs as for any request, on the real destination
                self._early.discard(flow.id)
                held.destination.apply(flow.request)
                await self._guarded(flow, held.rule, held.routed, early=False)
            return
        self._early.discard(flow.id)
        state = self._flows.get(flow.id)
        if isinstance(state, _FlowState) and flow.request.stream and flow.id not in self._diverted:
            self._check_sent(flow, state)  # the headers left after requestheaders: what we see is what was sent

    async def _run_inbound(self, flow: http.HTTPFlow, rule: Rule, routed: Any, early: bool) -> None:
        ready = self._ready
        assert ready is not None
        if ready is not self._ready_seen and not self._ready_ok(ready):
            try:
                await asyncio.wait_for(asyncio.shield(ready), ctx.options.mi_timeout)
            except (TimeoutError, Exception) as e:
                self._fail_closed(flow, rule, f"apim-mi is not ready: {e!r}")
                return
        assert self.tokens is not None
        request_id = self._request_ids.next()
        seen = flowcontext.RequestSnapshot(flow.request)
        self.inspector.begin(flow)  # consumes Ocp-Apim-Trace / Apim-Debug-Authorization, as APIM does
        body = uploads.StreamedBody(uploads.way_out(self._stream_limit_text)) if early else None
        context, as_read = flowcontext.request_context(flow, request_id, body)
        if routed is not None:
            from .sources.apiops import flows

            flows.apply_route(routed, context)
        trace = Trace.since(request_id.hex, flow.request.timestamp_start)
        services = self._services(rule)
        run = engine.PolicyRun(rule.policy, context, trace, services, rule_name=rule.name)
        state = _FlowState(rule, run, time.perf_counter(), request_id, early=early)
        self._flows[flow.id] = state
        trace.add("inbound", "api-inspector", inspector.request_later(flow, seen))
        trace.add("inbound", "api-inspector", flows.configuration_data(flow, routed) if routed is not None
                  else inspector.configuration_later(rule, seen))
        if flow.id in self._diverted:  # parked at the sink, then streamed: the policy needs the body it cannot have
            need = self._body_use(rule)[0]
            await engine.handle_error(run, uploads.body_error(f"The policy needs the request body ({need}). "
                                                              + uploads.way_out(self._stream_limit_text)))
        else:
            await engine.run_inbound(run)
        if body is not None and (body.touched or context.request.body is not body):
            if self._body_use(rule)[1]:
                self._forward_unchanged(flow, state, body.cause)
                return
            if run.error is not None:  # e.g. an expression's ExpressionValueEvaluationFailure: name the real cause
                run.error.reason = uploads.BODY_ERROR
            else:
                need = self._body_use(rule)[0] or "set-body"
                await engine.handle_error(run, uploads.body_error(f"The policy replaces the request body ({need}). "
                                                                  + body.cause))
        if routed is not None and run.response is None and (no_backend := flows.unrouted(routed, context)):
            await engine.handle_error(run, no_backend)
        if run.response is None and run.injections:
            destination = context.request.url  # where the request goes once the policy has run
            insecure = self._insecure_transport(destination.scheme, destination.host, rule)
            if insecure:
                await engine.handle_error(run, PolicyError(
                    "apim-mi", f"Refusing to send a managed identity token {insecure} to {destination.host} "
                               "(set allow_http: true on the rule to allow it).", "InsecureDestination"))  # fmt: skip
        cert = run.client_certificates.get(id(context.request)) if run.response is None else None
        if cert is not None:
            await self._present_upstream(flow, run, cert)
        if run.response is not None:
            self._respond(flow, flowcontext.make_response(run.response))
            state.seen = seen
            self._finish(flow, state)
            return
        flowcontext.apply_request(context.request, flow, as_read)
        state.seen = flowcontext.RequestSnapshot(flow.request)  # for the log line, once the request has left
        trace.add("backend", "forward-request", inspector.forward_later(run.forward_timeout, state.seen, trace.secrets))

    def _body_use(self, rule: Rule) -> tuple[str | None, bool]:
        """What a streamed body means for the rule's policy, worked out once per policy: the first place that may
        need the request body, and whether the rule ignores errors. The entry keeps the policy, so its id is not
        reused for another one."""
        entry = self._body_uses.get(id(rule.policy))
        if entry is None or entry[0] is not rule.policy:
            entry = (rule.policy, uploads.request_body_need(rule.policy), uploads.ignores_errors(rule.policy))
            self._body_uses[id(rule.policy)] = entry
        return entry[1], entry[2]

    def _forward_unchanged(self, flow: http.HTTPFlow, state: _FlowState, cause: str) -> None:
        """ignore_error on a rule whose policy cannot run on a streamed body: the request goes on as the client sent
        it, and the trace and log say so."""
        run = state.run
        run.warn("inbound", "apim-mi", f"{cause} ignore-error is true: the request is forwarded unchanged, without "
                 "a token.")
        run.error, run.response = None, None
        run.injections.clear()
        state.unchanged = True
        self._finish(flow, state)

    def _unprotected(self, flow: http.HTTPFlow, rule: Rule) -> None:
        """A matched request whose headers already left without the policy: nothing can stop it any more, so it is
        recorded as what it is (an error, or with ignore_error a warning), never as a token added."""
        quiet = self._body_use(rule)[1]
        cause = ("its body is streamed and the policy needs it (ignore_error: true), so it was forwarded unchanged"
                 if quiet else "another addon set flow.request.stream after apim-mi's requestheaders hook, so its "
                 "headers left before the policy could run; load apim-mi after that addon")  # fmt: skip
        if not quiet:
            self._count("failed", rule.name)
            flow.marked = ":x:"
        flow.comment = f"apim-mi [{rule.name}]: sent without a token: {cause}"
        flow.metadata[METADATA_KEY] = {"summary": {"rule": rule.name, "outcome": "sent without a token",
                                                   "error": cause}}
        (log.warning if quiet else log.error)("apim-mi: %s %s [%s] sent without a token: %s", flow.request.method,
                                              flowcontext.pretty_url(flow.request), rule.name, cause)

    def _respond(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """Answers the client. In requestheaders (or for a request already parked there) the request goes to the
        sink instead, since mitmproxy cannot answer a request whose body is still arriving; ``response`` replaces the
        sink's answer."""
        if flow.id not in self._early:
            flow.response = response
            return
        diverted = self._diverted.get(flow.id)
        if diverted is None:
            diverted = (self.sink.divert(flow.request), None)
        self._diverted[flow.id] = (diverted[0], response)

    async def _present_upstream(self, flow: http.HTTPFlow, run: engine.PolicyRun, cert: Any) -> None:
        """authentication-certificate on the forwarded request: the upstream TLS connection mitmproxy opens next for
        this client and address presents ``cert``; one already open cannot, so the request fails closed."""
        url = run.context.request.url
        address = (url.host, url.port)
        server = flow.server_conn
        if url.scheme == "https" and server.timestamp_tls_setup is not None and server.address == address:
            await engine.handle_error(run, PolicyError(
                "authentication-certificate", "The TLS connection to the backend was opened before the request was "
                "read, so it cannot present the client certificate (start mitmdump with --set "
                "connection_strategy=lazy).", "ClientCertificateNotPresented"))  # fmt: skip
            return
        self.upstream_certs.expect(flow.client_conn.id, address, cert)

    def tls_start_server(self, tls_start: Any) -> None:
        """Adds the client certificate authentication-certificate chose to the upstream TLS connection. Script addons
        run before mitmproxy's tlsconfig, so its connection setup is done first, here."""
        key = (tls_start.context.client.id, tls_start.context.server.address)
        if not self.upstream_certs.pending(*key):
            return
        tlsconfig = ctx.master.addons.get("tlsconfig")
        if tls_start.ssl_conn is None and tlsconfig is not None:
            tlsconfig.tls_start_server(tls_start)
        self.upstream_certs.apply(*key, tls_start.ssl_conn)

    def client_disconnected(self, client: Any) -> None:
        self.upstream_certs.forget(client.id)

    def _insecure_transport(self, scheme: str | bytes, host: str, rule: Rule) -> str:
        """Why a token must not go to this destination ("" when it may): plain http://, or https:// while
        mitmproxy does not verify upstream certificates (``ssl_insecure``), to a non-loopback host. ``scheme`` as
        the policy's URL has it, or as mitmproxy keeps it (bytes: the fast path decodes nothing it may not need)."""
        if rule.allow_http or flowcontext.is_loopback(host):
            return ""
        if scheme != "https" and scheme != b"https":
            return "over plain http://"
        if self._ssl_insecure:
            return "over https:// without certificate verification (ssl_insecure is on)"
        return ""

    def responseheaders(self, flow: http.HTTPFlow) -> Any:
        """The earliest point after the request went upstream: check what it carried, take the token out of the
        flow, and start streaming what should stream (``streaming``). Only then is there async work (outbound on
        the headers): the coroutine is returned for mitmproxy to await, every other flow costs no coroutine."""
        state = self._flows.get(flow.id)
        if state is None:
            streaming.stream_unmatched(flow)
            return None
        if type(state) is fastpath.Quick:
            if state.went_out(flow.request) and fastpath.buffered(flow.response):
                self._quick_sent(flow, state)
                return None
            state = self._full(flow, state)
        assert isinstance(state, _FlowState)
        if state.sent is None:
            self._check_sent(flow, state)
        self._redact(flow, state)
        # where the trace will be, now: an answer that streams (now, or once it outgrows stream_large_bodies) has
        # sent its headers before the flow ends
        self.inspector.announce(flow, state.run.trace.trace_id)
        return self._start_stream(flow, state) if self._streams(flow, state) else None

    def _streams(self, flow: http.HTTPFlow, state: _FlowState) -> bool:
        """Whether this answer streams with the policy's outbound run on its headers: SSE, buffer-response="false" or
        mitmproxy's own stream_large_bodies; not after an error, nor for a backend error status that goes through
        on-error (those stay buffered and are handled in ``response``)."""
        run, resp = state.run, flow.response
        if resp is None or run.error is not None or run.response is not None:
            return False
        if not resp.stream and not streaming.should_stream(resp, run):
            return False
        return engine.backend_error_status(run, resp.status_code) is None

    async def _start_stream(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        try:
            await self._stream_outbound(flow, state)
        except Exception as e:
            log.exception("apim-mi: internal error in outbound of rule '%s'", state.rule.name)
            state.failure = f"failed: internal error {e!r}"
            state.answer = _apim_500(str(state.run.context.request_id))
            if flow.response is not None:
                flow.response.stream = False

    async def _stream_outbound(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """Outbound runs now on status and headers (the body passes later, untouched); an outbound that answers
        itself keeps the answer buffered, and ``response`` replaces it."""
        run = state.run
        resp = flow.response
        assert resp is not None
        already = bool(resp.stream)  # mitmproxy's own stream_large_bodies decision
        run.trace.add("backend", "forward-request", inspector.response_later(flow))
        self._diagnose_backend(flow, state)
        run.streaming = True
        run.context.response, received = flowcontext.response_context(resp)
        if run.policy.sections.get("outbound"):
            await engine.run_outbound(run)
        if run.response is not None:  # outbound answered: mitmproxy reads the backend body, ``response`` replaces it
            state.answer = flowcontext.make_response(run.response)
            resp.stream = False
            return
        answer = run.context.response
        if answer.body is not None and answer.body.content:
            run.warn("outbound", "apim-mi", "Outbound set a body on a streamed answer; the backend's body streams "
                     "unchanged (buffer the answer: drop buffer-response=\"false\" or raise stream_large_bodies).")
            answer.body = None
        flowcontext.apply_response(answer, flow, received)
        for name, value in run.response_headers:  # what policies add to any answer (cors, remaining tokens)
            resp.headers[name] = value
        if not already or resp.stream is True:  # another addon's stream callable stays, untapped
            resp.stream = state.tap = streaming.Tap(sse=streaming.is_event_stream(resp) and bool(run.on_response),
                                                    keep=bool(run.on_response))  # fmt: skip
        run.trace.add(
            "outbound",
            "transfer-response",
            {"message": "Response headers have been sent to the caller. Starting to stream the response body."},
        )

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync: a fast-path flow ends here without a coroutine; the engine path's outbound is returned."""
        if self._diverted:
            self._undivert(flow)
        state = self._flows.get(flow.id)
        if state is None:
            return None
        if type(state) is fastpath.Quick:
            if state.checked and fastpath.accepted(flow.response, state.carried.echoes):
                self._quick_finish(flow, state)
                return None
            state = self._full(flow, state)
        assert isinstance(state, _FlowState)
        return self._response(flow, state)

    async def _response(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        try:
            run = state.run
            if state.answer is not None:
                flow.response = state.answer
            elif state.tap is not None or state.run.streaming:
                await self._end_stream(flow, state, state.tap)
            elif flow.response is not None and flow.response.stream and run.error is None and run.response is None:
                self._streamed_late(flow, state)
            elif flow.response is not None and run.error is None and run.response is None:
                await self._outbound(flow, state)
                run.trace.add("outbound", "transfer-response", inspector.SENT_IN_FULL)
        except Exception as e:
            log.exception("apim-mi: internal error in outbound of rule '%s'", state.rule.name)
            flow.response = _apim_500(str(state.run.context.request_id))
            state.failure = f"failed: internal error {e!r}"
        finally:
            self._finish(flow, state)

    def _streamed_late(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """mitmproxy began streaming a body of unknown length once it outgrew ``stream_large_bodies``, after
        ``responseheaders``: the answer has left, so outbound can no longer act on it, and the trace says so."""
        run = state.run
        run.trace.add("backend", "forward-request", inspector.response_later(flow))
        if run.policy.sections.get("outbound") or run.on_response:
            run.warn("outbound", "apim-mi", "The answer outgrew stream_large_bodies while it arrived and was streamed "
                     "to the client as it came: outbound and the policies waiting for the complete answer did not run.")
        run.trace.add("outbound", "transfer-response", {
            "message": "Response body streaming to the caller is complete.", "note": "streamed by mitmproxy "
            "(stream_large_bodies) once the body outgrew it", **engine.UNVERIFIED})  # fmt: skip

    async def _outbound(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """A buffered answer: backend error status → on-error; else the complete answer to the policies that wait
        for it (``run.on_response``), then outbound."""
        assert flow.response is not None
        run = state.run
        run.trace.add("backend", "forward-request", inspector.response_later(flow))
        self._diagnose_backend(flow, state)
        error = engine.backend_error_status(run, flow.response.data.status_code)
        if error is not None:
            await engine.handle_error(run, error)
            assert run.response is not None
            flow.response = flowcontext.make_response(run.response)
            return
        if not (run.policy.sections.get("outbound") or run.on_response):
            return
        edits = None if run.on_response or run.finalizers else core.header_edits(run.policy, "outbound")
        if edits is not None:  # literal set-headers only: on the answer's headers, no context.Response to make
            headers, received = flowcontext.response_headers(flow.response)
            core.apply_header_edits(run, edits, headers, "outbound")
            flowcontext.apply_response_headers(headers, flow.response, received)
            return
        run.context.response, received = flowcontext.response_context(flow.response)
        response = run.context.response
        if run.on_response:
            body = flow.response.get_content(strict=False)
            await engine.deliver(run, engine.Delivered(
                flow.response.status_code, body, False, len(body or b""), response=response))  # fmt: skip
        await engine.run_outbound(run)
        if run.response is not None:
            flow.response = flowcontext.make_response(run.response)
        else:
            flowcontext.apply_response(run.context.response, flow, received)

    async def _end_stream(self, flow: http.HTTPFlow, state: _FlowState, tap: streaming.Tap | None) -> None:
        """The last chunk has reached the client: the trace says how much and how long (when apim-mi's tap counted
        it), then the policies that wait for the complete answer run (``Delivered.response`` is None: headers can no
        longer change)."""
        run = state.run
        counted = tap.summary() if tap is not None else {"note": "streamed through another addon's stream callable"}
        run.trace.add("outbound", "transfer-response",
                      {"message": "Response body streaming to the caller is complete.", **counted})  # fmt: skip
        if tap is not None and run.on_response and flow.response is not None:
            await engine.deliver(run, engine.Delivered(flow.response.status_code, tap.body, True, tap.size, tap.sse))

    def error(self, flow: http.HTTPFlow) -> None:
        if self._diverted:
            self._undivert(flow)
        self._early.discard(flow.id)
        self._held.pop(flow.id, None)
        state = self._flows.get(flow.id)
        if type(state) is fastpath.Quick:
            if not state.checked and state.went_out(flow.request):
                self._quick_sent(flow, state)
            if state.checked:
                self._quick_finish(flow, state)
                return
            state = self._full(flow, state)
        if state is not None:
            if state.sent is None:
                self._check_sent(flow, state)
            self._finish(flow, state)

    def _undivert(self, flow: http.HTTPFlow) -> None:
        """A request that went to the sink: back to where it was going (for saved flows and mitmweb), and the
        client gets the answer meant for it instead of the sink's."""
        diverted = self._diverted.pop(flow.id, None)
        self._early.discard(flow.id)
        if diverted is not None:
            destination, answer = diverted
            destination.apply(flow.request)
            if answer is not None and flow.response is not None:
                flow.response = answer

    def _check_sent(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """Whether the request that went upstream carried every injected token: nothing claims an injection the
        backend never saw (another addon may change the request after the policy ran)."""
        run = state.run
        missing = _not_carried(flow.request.data.headers.fields, run.injections, run.trace.secrets, self._bytes_of)
        state.sent = not missing
        if missing and run.error is None:
            run.error = PolicyError("apim-mi", f"The request went upstream without the token in "
                                    f"{', '.join(missing)}: the request was changed after the policy ran (another "
                                    "addon, or a streamed body).", NOT_SENT)  # fmt: skip
            run.trace.add("backend", "apim-mi", {"message": run.error.message, **engine.UNVERIFIED})
        self._record(flow, state)

    def _finish(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        engine.finish(state.run)
        if flow.response is not None:
            for name, value in state.run.response_headers:
                flow.response.headers[name] = value
        self._redact(flow, state)
        self._record(flow, state, final=True)
        self._flows.pop(flow.id, None)
        self.inspector.finish(flow, state.run.trace)  # builds the APIM document only if the client asked for it

    def _diagnose_backend(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """A backend 401/403 to a request carrying our token: say why (audience near misses), in trace and log; and
        a response body that echoes the token (which redaction cannot remove)."""
        assert flow.response is not None
        run = state.run
        found: list[str] = []
        if flow.response.data.status_code in diagnostics.REJECTIONS:
            audiences = [str(i.claims.get("aud") or i.resource) for i in run.injections if i.claims or i.resource]
            found = diagnostics.diagnose_rejection(
                flow.response.status_code, flow.response.headers.get_all("WWW-Authenticate"), audiences
            )
        if run.injections:
            body = flowcontext.content_of(flow.response)
            if body and diagnostics.reflects(body, self._echoes(run)):
                found.append(diagnostics.REFLECTED)
        if not found:
            return
        for message in found:
            run.warn("backend", "apim-mi", message)
            log.warning("apim-mi: %s %s [%s] backend answered %d: %s", flow.request.method,
                        flowcontext.pretty_url(flow.request), run.rule_name, flow.response.status_code, message)
        if not flow.marked:
            flow.marked = ":warning:"

    def _forms(self, secret: str) -> tuple[bytes, tuple[bytes, ...]]:
        """The secret as bytes and its ``diagnostics.echoes``, made once per secret (kept until the tokens are
        flushed, at most ``_SECRETS_KEPT`` of them): a token is a kilobyte, and every flow that carries it asks."""
        found = self._secret_forms.get(secret)
        return found if found is not None else _keep(self._secret_forms, secret, diagnostics.forms(secret))

    def _bytes_of(self, secret: str) -> bytes:
        return self._forms(secret)[0]

    def _bearer(self, secret: str) -> tuple[bytes, bytes]:
        """``Bearer <secret>`` as a header value and what redaction makes of it when the secret is the flow's only
        one: worked out once per secret (kept as ``_forms`` keeps its forms)."""
        found = self._bearer_forms.get(secret)
        if found is None:
            value = b"Bearer " + self._bytes_of(secret)
            found = _keep(self._bearer_forms, secret, (value, _scrubbed(value, {secret}, self._bytes_of)))
        return found

    def _echoes(self, run: engine.PolicyRun) -> Sequence[bytes]:
        """``diagnostics.echoes`` of the flow's secrets."""
        secrets = run.trace.secrets
        if len(secrets) == 1:  # the usual one token: its echoes as they are kept
            for secret in secrets:
                return self._forms(secret)[1]
        needles: list[bytes] = []
        for secret in secrets:
            needles.extend(self._forms(secret)[1])
        return needles

    def _redact(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        if state.redacted or not self._redact_on:
            return
        state.redacted = True
        names = _names(state.run.injections)
        if not names:
            return
        secrets = state.run.trace.secrets
        bearer = shown = None
        if len(secrets) == 1:  # the usual one token: its "Bearer <token>" field redacted once per token
            for secret in secrets:
                bearer, shown = self._bearer(secret)
        headers = flow.request.data.headers
        fields = headers.fields
        changed: list[tuple[bytes, bytes]] | None = None
        for i, (name, value) in enumerate(fields):
            if name.lower() in names:
                scrubbed = shown if value == bearer else _scrubbed(value, secrets, self._bytes_of)
                if scrubbed != value:
                    if changed is None:
                        changed = list(fields)
                    changed[i] = (name, scrubbed)
        if changed is not None:
            headers.fields = tuple(changed)

    def _record(self, flow: http.HTTPFlow, state: _FlowState, final: bool = False) -> None:
        """Summary into flow.comment/metadata and one log line (never a token), when the request leaves and again
        when the flow ends (``final``: then with the APIM trace, built when something reads it). A buffered answer
        ends soon: when its request leaves, only the line is written (and counted)."""
        run = state.run
        elapsed_ms = (time.perf_counter() - state.started) * 1000
        if run.error is not None or state.failure:
            flow.marked = ":x:"
        resp = flow.response
        if final or state.early or (resp is not None and not fastpath.buffered(resp)):
            self._summarise(flow, state, elapsed_ms, final)
        if not state.recorded:
            state.recorded = True
            self._log_line(flow, state)

    def _summarise(self, flow: http.HTTPFlow, state: _FlowState, elapsed_ms: float, final: bool) -> None:
        """``flow.comment`` now; the flow's summary in ``flow.metadata`` (at its end with the APIM trace) once
        something reads it. The comment is scrubbed as a whole, which hides what scrubbing its parts hides."""
        run = state.run
        outcome, claims, identity = _outcome(state), _claims(run), _identity(run)
        resp = flow.response
        secrets = run.trace.secrets
        comment = _comment(run.rule_name, identity, claims.get("aud", ""), outcome,
                           resp.data.status_code if resp is not None else None, elapsed_ms, run.warnings)  # fmt: skip
        flow.comment = _scrubbed_text(comment, secrets)
        keys = ("summary", "trace") if final and self._trace_on else ("summary",)
        summary = (run.rule_name, outcome, identity, claims, elapsed_ms, tuple(run.warnings), state.request_id)
        flow.metadata[METADATA_KEY] = FlowRecord(partial(_engine_document, summary, secrets, run.trace, keys), keys)

    def _log_line(self, flow: http.HTTPFlow, state: _FlowState) -> None:
        """The flow's one line (and its counter) once the request left or was answered."""
        run = state.run
        if run.error is not None and run.error.reason == NOT_SENT:
            self._count("failed", run.rule_name)
            log.error("apim-mi: %s %s [%s] %s", flow.request.method, _Url(flow, state.seen), run.rule_name,
                      run.error.message)  # fmt: skip
        elif run.error is not None:
            self._count("failed", run.rule_name)
            if self.metrics is not None:
                self.metrics.policy_error(run.error.source)
            cause = run.token_failures[-1] if run.token_failures else run.error.message
            log.warning("apim-mi: %s %s [%s] failed closed: %s", flow.request.method, _Url(flow, state.seen),
                        run.rule_name, scrub(cause, run.trace.secrets))  # fmt: skip
        elif run.injections and state.sent:
            self._count("injected", run.rule_name)
            if logs.wanted(log, logging.INFO):  # its parts are worked out only for a line that is shown
                _log_injected(flow, state.seen, run.rule_name, _identity(run), _claims(run).get("aud", ""),
                              _outcome(state))  # fmt: skip
        elif logs.wanted(log, logging.INFO):
            log.info("apim-mi: %s %s [%s] %s", flow.request.method, _Url(flow, state.seen), run.rule_name,
                     _outcome(state))  # fmt: skip

    def _count(self, event: str, rule_name: str) -> None:
        """``mi.status``'s counters, and the per-rule Prometheus counters when mi_metrics is on."""
        self.counters[event] += 1
        if self.metrics is not None:
            self.metrics.flow(event, rule_name)

    def _fail_closed(self, flow: http.HTTPFlow, rule: Rule | None, reason: str) -> None:
        self._count("failed", rule.name if rule else "")
        request_id = str(uuid.uuid4())
        self._respond(flow, _apim_500(request_id))
        flow.marked = ":x:"
        flow.comment = f"apim-mi [{rule.name if rule else '?'}]: failed closed: {reason}"
        flow.metadata[METADATA_KEY] = {"summary": {"rule": rule.name if rule else "", "outcome": "failed closed",
                                                   "error": reason, "requestId": request_id}}
        state = self._flows.pop(flow.id, None)
        if isinstance(state, _FlowState):
            self._redact(flow, state)
        log.error("apim-mi: %s %s failed closed: %s", flow.request.method, flowcontext.pretty_url(flow.request), reason)

    # -- commands ---------------------------------------------------------------------------------------------

    @command.command("mi.status")
    def status(self) -> str:
        """Cached tokens (identity, resource, expiry, source, hits; never the token) and counters, as JSON."""
        tokens = self.tokens.status() if self.tokens is not None else []
        provider = dict(self.tokens.counters) if self.tokens is not None else {}
        return json.dumps({"tokens": tokens, "counters": {**self.counters, **provider}, "ai": self.gateway.ai.status()},
                          indent=2)

    @command.command("mi.flush")
    def flush(self) -> str:
        """Forget every cached token."""
        n = self.tokens.flush() if self.tokens is not None else 0
        self._carried_by_key.clear()
        self._secret_forms.clear()
        self._bearer_forms.clear()
        log.info("apim-mi: flushed %d cached token(s)", n)
        return f"flushed {n} token(s)"

    @command.command("mi.reload")
    def reload_command(self) -> str:
        """Re-read the rules file now (a broken file keeps the last good rules)."""
        return "reloaded" if self.reload() else "reload failed; previous rules kept (see the event log)"


#: Secrets whose forms ``_forms`` keeps (then it starts again): the live tokens, a few per identity.
_SECRETS_KEPT = 64


def _keep[T](kept: dict[str, T], secret: str, made: T) -> T:
    """``made`` kept for ``secret``; the cache starts over once it holds ``_SECRETS_KEPT`` secrets."""
    if len(kept) >= _SECRETS_KEPT:
        kept.clear()
    kept[secret] = made
    return made


def _log_injected(flow: http.HTTPFlow, seen: flowcontext.RequestSnapshot | None, rule_name: str, identity: str,
                  aud: Any, outcome: str) -> None:  # fmt: skip
    """The flow's info line once its token went upstream, on either path. Callers ask ``logs.wanted`` first, so
    nothing of it is built when nothing would show it (``termlog_verbosity=warn``)."""
    log.info("apim-mi: %s %s [%s] %s%s: %s", flow.request.method, _Url(flow, seen), rule_name, identity or "-",
             f" aud={aud}" if aud else "", outcome)  # fmt: skip


class _Url:
    """The flow's URL for a log line, worked out only if the line is written (``%s``)."""

    __slots__ = ("flow", "seen")

    def __init__(self, flow: http.HTTPFlow, seen: flowcontext.RequestSnapshot | None) -> None:
        self.flow, self.seen = flow, seen

    def __str__(self) -> str:
        return self.seen.url if self.seen is not None else flowcontext.pretty_url(self.flow.request)


def _not_carried(fields: tuple[tuple[bytes, bytes], ...], injections: list[engine.Injection], secrets: set[str],
                 encoded: Callable[[str], bytes] = str.encode) -> list[str]:  # fmt: skip
    """The injected headers (sorted) that no field of ``fields`` carries a token in (``encoded``: a secret's bytes)."""
    if not injections:
        return []
    if len(injections) == 1 and len(secrets) == 1:  # the usual one token in one header: no bookkeeping
        name, header = injections[0].header.lower().encode(), injections[0].header
        for secret in secrets:
            token = encoded(secret) if secret else b""
            if token:
                for field, value in fields:
                    if field.lower() == name and (value.endswith(token) or token in value):
                        return []
        return [header]
    waiting = {i.header.lower().encode(): i.header for i in injections}
    tokens = [encoded(secret) for secret in secrets if secret]
    for name, value in fields:
        name = name.lower()
        if name in waiting:
            for token in tokens:
                if value.endswith(token) or token in value:  # "Bearer <token>" needs no search
                    del waiting[name]
                    break
    return sorted(set(waiting.values()))


def _names(injections: list[engine.Injection]) -> tuple[bytes, ...] | set[bytes]:
    """The injected headers' names as mitmproxy keeps them, lower-cased: a tuple for the usual one."""
    if len(injections) == 1:
        return (injections[0].header.lower().encode(),)
    return {i.header.lower().encode() for i in injections}


def _outcome(state: _FlowState) -> str:
    """What became of the flow, in the words of its summary, comment and log line."""
    run = state.run
    if state.failure:
        return state.failure
    if run.error is not None:
        return f"failed ({run.error.reason or run.error.source})"
    if state.unchanged:
        return "forwarded unchanged (ignore-error): the policy cannot run on a streamed body"
    if run.response is not None:
        return "answered by the policy"
    injections = run.injections
    if injections:
        verb = "token added to " if state.sent else "token not sent upstream, meant for "
        if len(injections) == 1:  # the usual one header: its name is the whole list
            return verb + injections[0].header
        return verb + ", ".join(sorted({i.header for i in injections}))
    if run.token_failures:
        return "no token (ignore-error), forwarded unchanged"
    return "policy applied"


def _claims(run: engine.PolicyRun) -> dict[str, Any]:
    """The claims of the first token injected (none: empty)."""
    for injection in run.injections:
        if injection.claims:
            return injection.claims
    return {}


def _identity(run: engine.PolicyRun) -> str:
    for injection in run.injections:
        if injection.identity:
            return injection.identity
    return ""


def _scrubbed(value: bytes, secrets: set[str], encoded: Callable[[str], bytes] = str.encode) -> bytes:
    """A header value (as mitmproxy keeps it) with every secret replaced (``encoded``: a secret's bytes). A value
    that is a short prefix and a token (``Bearer <token>``), holding it only there, is cut instead of searched: a
    search for a 1 KB token costs microseconds, and the answer is the same. A prefix shorter than every secret cannot
    hold one."""
    for secret in secrets:
        token = encoded(secret)
        head = len(value) - len(token)
        if token and 0 <= head < 16 and value.endswith(token) and _only_at_end(value, token, head):
            if not head:
                return _REDACTED
            prefix = value[:head]  # at most ``head`` characters once decoded
            if len(secrets) == 1 or all(len(other) > head for other in secrets):  # the usual one: it is ``token``
                return prefix + _REDACTED
            return _scrubbed(prefix, secrets, encoded) + _REDACTED
    return scrub(value.decode("utf-8", "surrogateescape"), secrets).encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]


def _scrubbed_text(text: str, secrets: set[str]) -> str:
    """``scrub`` of a short text (a comment): a secret longer than the text cannot be in it, so a text that holds
    none (always, in practice) is returned as it is, without a search for a kilobyte-long token."""
    for secret in secrets:
        if secret and len(secret) <= len(text) and secret in text:
            return scrub(text, secrets)  # type: ignore[no-any-return]
    return text


def _only_at_end(value: bytes, token: bytes, head: int) -> bool:
    """``value`` (``head`` bytes, then ``token``) holds no earlier occurrence of ``token``. For a token longer than
    ``head`` one would overlap the last, so the token would repeat itself with a period of at most ``head`` bytes: a
    token that does not (a JWT) needs no search. Otherwise the positions holding the token's first byte are
    compared."""
    if len(token) > head and _shortest_period(token) > head:
        return True
    i = value.find(token[:1], 0, head)
    while i >= 0:
        if value.startswith(token, i):
            return False
        i = value.find(token[:1], i + 1, head)
    return True


@lru_cache(maxsize=_SECRETS_KEPT)
def _shortest_period(token: bytes, most: int = 16) -> int:
    """The token's shortest period up to ``most`` bytes (``token[p:] == token[:-p]``), or ``most + 1``: worked out
    once per token, since every flow that carries it is redacted."""
    for p in range(1, min(most, len(token) - 1) + 1):
        if token.startswith(token[p:p + 1]) and token[p:] == token[:-p]:
            return p
    return most + 1


_REDACTED = REDACTED.encode()


def _summary(rule_name: str, outcome: str, identity: str, claims: dict[str, Any], elapsed_ms: float,
             warnings: Sequence[str], request_id: str | uuid.UUID | None) -> dict[str, Any]:  # fmt: skip
    """``flow.metadata['apim_mi']['summary']``: what happened, in a few fields (claims, never the token)."""
    return {
        "rule": rule_name, "outcome": outcome, "identity": identity, "aud": claims.get("aud", ""),
        "exp": claims.get("exp"), "elapsed_ms": round(elapsed_ms, 3), "warnings": list(warnings),
        "requestId": str(request_id) if request_id is not None else "",
    }  # fmt: skip


def _shown(summary: dict[str, Any], secrets: set[str] | frozenset[str]) -> dict[str, Any]:
    """The summary as shown: scrubbed (a copy) only if a secret occurs in one of its strings, which it practically
    never does."""
    if secrets:
        texts = "\n".join((summary["rule"], summary["outcome"], summary["identity"], str(summary["aud"]),
                           *summary["warnings"]))  # fmt: skip
        if any(s in texts for s in secrets):
            return scrub(summary, secrets)  # type: ignore[no-any-return]
    return summary


def _comment(rule_name: str, identity: str, aud: Any, outcome: str, status: int | None, elapsed_ms: float,
             warnings: Sequence[str]) -> str:  # fmt: skip
    """``flow.comment``: the summary in one line (and a line per warning), as mitmweb and the flow list show it."""
    comment = (f"apim-mi [{rule_name}] {identity or '-'}{f' aud={aud}' if aud else ''}: {outcome}"
               f"{f', answered {status}' if status is not None else ''} ({elapsed_ms:.1f} ms)")  # fmt: skip
    if warnings:
        comment += "".join(f"\nwarning: {w}" for w in warnings)
    return comment


def _engine_document(summary: tuple[Any, ...], secrets: set[str], trace: Trace,
                     keys: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """An engine-path flow's ``summary`` (``_summary``'s arguments) and ``trace``, made when something first reads
    them."""
    document = {"summary": _shown(_summary(*summary), secrets)}
    if "trace" in keys:
        document["trace"] = trace.to_json()
    return document


def _quick_document(quick: fastpath.Quick, elapsed_ms: float, keys: tuple[str, ...]) -> dict[str, Any]:
    """A fast-path flow's ``summary`` and ``trace``, made when something first reads them."""
    request_id = uuid.uuid4()
    rule, _, _, identity = quick.route
    token = quick.carried.token
    summary = _summary(rule.name, fastpath.OUTCOME, identity, token.claims, elapsed_ms, (), str(request_id))
    document = {"summary": _shown(summary, {token.value})}
    if "trace" in keys:
        document["trace"] = quick.trace(request_id.hex).to_json()
    return document


def _config_settings(config: RulesConfig) -> dict[str, Any]:
    """What policies read from the rules file: backends, client certificates, authorizations."""
    return {"backends": config.backends, "certificates": config.certificates, "authorizations": config.authorizations}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _apim_500(request_id: str) -> http.Response:
    body = {"statusCode": 500, "message": "Internal server error", "activityId": request_id}
    return http.Response.make(500, json.dumps(body, indent=4), {"Content-Type": "application/json; charset=utf-8"})


def _error_response(status: int, message: str) -> http.Response:
    return http.Response.make(
        status, json.dumps({"statusCode": status, "message": message}), {"Content-Type": "application/json"}
    )


__all__ = ["REDACTED", "ApimMi"]
