"""What a user sees of the addon's work, as one digest: drives ``ApimMi``'s hooks on fixed flows (a shorthand rule,
the benchmark's APIM policy, a policy that fails into on-error; with ``Ocp-Apim-Trace``, ``Apim-Debug-Authorization``
and a client ``Authorization``) under a fake clock, ids and token, and hashes the saved flows (``mitmdump -w``
bytes), comments, response headers, rendered traces, the trace endpoint's store and the log lines.

Run it against two versions of the code to show a hot-path change leaves the output byte-identical:

    PYTHONPATH=/path/to/other/worktree/addon .venv/bin/python bench/identical.py
    .venv/bin/python bench/identical.py [DIR]     # DIR: also each hashed piece as a file, to diff two runs
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io as _io
import itertools
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Deterministic time and ids, installed before apim_mi is imported (Trace binds its clock at class creation).
_ticks = itertools.count()
time.perf_counter = lambda: 1000.0 + next(_ticks) * 0.000125
_seconds = itertools.count()
time.time = lambda: 1_780_000_000.0 + next(_seconds) * 0.001
_ids = itertools.count(1)
uuid.uuid4 = lambda: uuid.UUID(int=next(_ids), version=4)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import micro  # noqa: E402
from rulegen import BENCH, policy_rules_text, rules_text  # noqa: E402

FAILING = """<policies><inbound><base/>
<set-variable name="t" value="@(context.Request.Headers.GetValueOrDefault("X-Tenant", "c"))"/>
<authentication-managed-identity resource="api://x" output-token-variable-name="tok"/>
<set-header name="X-Tok" exists-action="override"><value>@((string)context.Variables["tok"])</value></set-header>
<set-header name="Authorization" exists-action="override">
  <value>@("Bearer " + (string)context.Variables["tok"])</value></set-header>
<choose><when condition="@(context.Request.Method == "DELETE")">
  <return-response><set-status code="405" reason="No"/></return-response></when></choose>
<set-header name="X-Bad" exists-action="override"><value>@(context.Request.Headers["nope"].First())</value></set-header>
</inbound><backend><forward-request/></backend><outbound/>
<on-error><set-header name="X-Err" exists-action="override"><value>@(context.LastError.Message)</value></set-header>
</on-error></policies>"""

REQUESTS = (
    ("GET", ((b"ocp-apim-trace", b"true"),)),
    ("DELETE", ((b"apim-debug-authorization", b"x"),)),
    ("GET", ((b"authorization", b"Bearer client"),)),
)


class _Digest:
    """sha256 of everything fed to it; with a directory, also each piece as a numbered file (to diff two runs)."""

    def __init__(self, dump: Path | None) -> None:
        self.sha = hashlib.sha256()
        self.dump = dump
        self.n = 0
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        if self.dump is not None:
            self.n += 1
            (self.dump / f"{self.n:03d}").write_bytes(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def main() -> None:
    from apim_mi import flowcontext
    from apim_mi.addon import ApimMi
    from apim_mi.tokens import TokenProvider
    from apim_mi.trace import METADATA_KEY, render
    from mitmproxy import io
    from mitmproxy.test import taddons, tflow, tutils

    flowcontext.RequestIds.next = lambda self: uuid.uuid4()  # the same deterministic ids, in the same order

    lines: list[str] = []
    logger = logging.getLogger("apim_mi")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(_Collect(lines))
    tmp = Path(tempfile.gettempdir()) / "apim-mi-identical"  # the same path for every run: it is in the traces
    tmp.mkdir(exist_ok=True)
    (tmp / "bench-policy.xml").write_text((BENCH / "policy.xml").read_text())
    (tmp / "failing.xml").write_text(FAILING)
    host, port = micro.TARGET_HOST.split(":")
    files = {
        "shorthand": rules_text(1, micro.TARGET_HOST),
        "APIM policy": policy_rules_text(micro.TARGET_HOST),
        "failing": f'credential: managed-identity\nrules:\n  - name: f\n    match: {{host: "{micro.TARGET_HOST}", '
        "path: /api}\n    policy: failing.xml\n",
    }
    digest = _Digest(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for i, (name, text) in enumerate(files.items()):
        path = tmp / f"rules-{i}.yaml"
        path.write_text(text)
        addon = ApimMi()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, mi_rules=str(path), mi_credential="managed-identity")

            async def setup(addon: ApimMi = addon) -> None:
                addon.tokens = TokenProvider(lambda s, c: micro.StubCredential(), timeout=5)
                addon._ready = asyncio.get_running_loop().create_future()
                addon._ready.set_result(None)

            loop.run_until_complete(setup())
            saved = _io.BytesIO()
            writer = io.FlowWriter(saved)
            for method, extra in REQUESTS:
                flow = tflow.tflow(req=tutils.treq(
                    method=method.encode(), host=host, port=int(port), path=b"/api/orders/42?a=1",
                    headers=((b"host", micro.TARGET_HOST.encode()), (b"x-tenant", b"fabrikam"), *extra),
                ))  # fmt: skip
                flow.request.scheme = "http"
                flow.response = None

                async def hooks(flow: tflow.http.HTTPFlow = flow, addon: ApimMi = addon) -> None:
                    if (pending := addon.request(flow)) is not None:  # sync unless there is async work
                        await pending
                    if flow.response is None:
                        headers = ((b"x-powered-by", b"x"), (b"content-type", b"text/plain"))
                        flow.response = tutils.tresp(headers=headers)
                        if inspect.isawaitable(pending := addon.responseheaders(flow)):
                            await pending
                        if (pending := addon.response(flow)) is not None:  # sync unless there is async work
                            await pending

                loop.run_until_complete(hooks())
                writer.add(flow)
                digest.update(flow.comment.encode())
                digest.update(repr(flow.response.headers.fields).encode())
                meta = flow.metadata.get(METADATA_KEY)
                if meta and "trace" in meta:
                    digest.update(render(meta["trace"]).encode())
            for trace_id in addon.inspector.store.ids():
                digest.update(repr(addon.inspector.store.get(trace_id)).encode())
            data = saved.getvalue()
            digest.update(data)
            print(f"{name}: saved flows {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    digest.update("\n".join(lines).encode())
    print(f"log lines: {len(lines)}")
    print(f"digest {digest.hexdigest()}")


if __name__ == "__main__":
    main()
