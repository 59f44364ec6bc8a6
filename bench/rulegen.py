"""Rules files for the benchmarks: 1 shorthand rule, N rules (the matching one last), the APIM-policy rule, and an
APIOps extraction (an APIM instance with one API whose policy adds the token)."""

from __future__ import annotations

import shutil
from pathlib import Path

BENCH = Path(__file__).resolve().parent
AUDIENCE = "api://00000000-0000-0000-0000-00000000a11c"
HEADER = "credential: managed-identity\nrules:\n"


def _rule(i: int, host: str, path: str, resource: str) -> str:
    return f'  - name: r{i}\n    match: {{host: "{host}", path: {path}}}\n    resource: "{resource}"\n'


def filler(i: int, layout: str, target_host: str) -> str:
    """Rule ``i`` of a large file that never matches the benchmark's request.

    ``spread``: 80 % distinct exact hosts, 10 % wildcard domains, 9 % other services of other hosts' paths, 1 % on
    the target host under other paths (so the target's bucket is not empty). ``one-host``: every rule on the target
    host under its own path (the worst case for an index by host); ``one-host-api``: every rule on the target host
    under ``/api/op<i>`` (APIM-style operations sharing a prefix).
    """
    if layout == "one-host":
        return _rule(i, target_host, f"/svc{i}/v1", f"https://svc{i}.bench.test")
    if layout == "one-host-api":
        return _rule(i, target_host, f"/api/op{i}", f"https://op{i}.bench.test")
    k = i % 100
    if k == 0:
        return _rule(i, target_host, f"/other{i}", f"https://other{i}.bench.test")
    if k <= 10:
        return _rule(i, f"*.zone{i}.bench.test", "/", f"https://zone{i}.bench.test")
    if k <= 19:
        return _rule(i, f"api{i}.bench.test:8443", f"/v{i % 7}/*", f"https://api{i}.bench.test")
    return _rule(i, f"svc{i}.bench.test", f"/api/v{i % 5}", f"https://svc{i}.bench.test")


def rules_text(
    n: int, target_host: str, *, layout: str = "spread", target_path: str = "/api", resource: str = AUDIENCE
) -> str:
    """``n`` rules; only the last matches ``target_host`` + ``target_path``."""
    parts = [HEADER]
    parts.extend(filler(i, layout, target_host) for i in range(n - 1))
    parts.append(_rule(n - 1, target_host, target_path, resource))
    return "".join(parts)


def policy_rules_text(target_host: str) -> str:
    rule = f'  - name: apim policy\n    match: {{host: "{target_host}", path: /api}}\n    policy: bench-policy.xml\n'
    return HEADER + rule


def write_rules(directory: Path, target_host: str, big: int = 10_000) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH / "policy.xml", directory / "bench-policy.xml")
    files = {
        "one": directory / "rules-1.yaml",
        "many": directory / f"rules-{big}.yaml",
        "policy": directory / "rules-policy.yaml",
    }
    files["one"].write_text(rules_text(1, target_host))
    files["many"].write_text(rules_text(big, target_host))
    files["policy"].write_text(policy_rules_text(target_host))
    files["apiops"] = write_extraction(directory / "apiops", target_host)
    return files


def write_extraction(directory: Path, target_host: str) -> Path:
    """An APIOps extraction: API ``/api`` (serviceUrl the backend's ``/api``, open), operations ``GET /orders/{id}``
    and ``GET /*``, and an API policy with authentication-managed-identity."""
    api = directory / "apimartifacts" / "apis" / "bench"
    api.mkdir(parents=True, exist_ok=True)
    (api / "apiInformation.json").write_text(
        '{"properties": {"displayName": "Bench", "path": "api", "serviceUrl": "http://' + target_host + '/api", '
        '"subscriptionRequired": false, "protocols": ["http", "https"]}}'
    )
    (api / "specification.yaml").write_text(
        "openapi: 3.0.1\ninfo: {title: Bench, version: '1'}\npaths:\n"
        "  /orders/{id}:\n    get: {operationId: get-order}\n  /*:\n    get: {operationId: anything}\n"
    )
    (api / "policy.xml").write_text(
        f'<policies><inbound><base /><authentication-managed-identity resource="{AUDIENCE}" /></inbound>'
        "<backend><base /></backend><outbound><base /></outbound><on-error><base /></on-error></policies>"
    )
    return directory / "apimartifacts"
