"""The soak test's short variant (the full one: scripts/soak, or APIM_MI_LONG=1)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import soak


def test_soak() -> None:
    long = os.environ.get("APIM_MI_LONG") == "1"
    r = soak.soak(20_000 if long else 2_000, 50, 15 if long else 4, 3.3)
    assert r.ok, r.failures
    assert r.requests >= (20_000 if long else 2_000)
    assert r.statuses == {"200": r.requests}
    assert r.backend_accepted == r.requests
    assert r.lifetimes_crossed >= 3 and r.reload_applied


@pytest.mark.parametrize("growth", [1.0, 1.3])
def test_rss_check(growth: float) -> None:
    r = soak.SoakResult(100, 1, 4, 13.0, {"200": 100}, 100, 0, 4, 3, [100, 100, 100, 100, 100, int(100 * growth)], True)
    soak.check(r)
    assert (r.failures == []) is (growth == 1.0)
