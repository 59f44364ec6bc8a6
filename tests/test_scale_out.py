"""Scale-out, measured: two mitmdump replicas behind a round-robin client. Each replica asks the token endpoint once
per (identity, resource) and token lifetime, however many requests it carries, so the token endpoint's load grows
with replicas, not with requests (docs/operations.md#scale-out)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
from proxy import proxy_for, write_rules

USER = "11111111-1111-1111-1111-111111111111"
REQUESTS = 60


def test_two_replicas_round_robin_token_requests(emu: Any, backend: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path, f"""
        rules:
          - name: orders (system-assigned)
            match: {{host: "127.0.0.1:{backend.port}", path: /api/orders}}
            resource: https://orders.contoso.test
          - name: billing (user-assigned)
            match: {{host: "127.0.0.1:{backend.port}", path: /api/billing}}
            resource: https://management.azure.com/
            client_id: {USER}
    """)  # fmt: skip
    replicas = [proxy_for(tmp_path / f"replica{i}", emu, rules) for i in range(2)]
    try:
        clients = [httpx.Client(proxy=md.url, trust_env=False, timeout=20) for md in replicas]
        paths = ["/api/orders/1", "/api/billing/7"]
        served = [0, 0]
        for n, client in zip(range(REQUESTS), itertools.cycle(clients), strict=False):
            r = client.get(f"{backend.url}{paths[(n // 2) % 2]}")  # every replica sees both paths
            assert r.status_code == 200, r.text
            served[n % 2] += 1
        for c in clients:
            c.close()
        stats = emu.stats()
        keys = {"https://orders.contoso.test": None, "https://management.azure.com/": USER}
        per_key = {resource: stats.count(resource, cid) for resource, cid in keys.items()}
        # 2 replicas x 2 (identity, resource) pairs = 4 token requests for 60 requests; each replica asked once per pair
        assert per_key == {"https://orders.contoso.test": 2, "https://management.azure.com/": 2}, per_key
        assert sum(stats.token_requests.values()) == 4 and served == [REQUESTS // 2] * 2
        for md in replicas:
            assert md.text().count("token added to Authorization") == REQUESTS // 2
    finally:
        for md in replicas:
            md.stop()
