"""Measured acceptance on the snippet corpus (skipped without it): every file loads, >= 95 % of the expressions
parse, >= 85 % evaluate against the synthesized context; and docs/policies.md matches the catalog, the handlers
and the measured rates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_loader_corpus import CORPUS, ROOT, _corpus_script

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="policy snippet corpus not present (scripts/corpus.py)")


@pytest.fixture(scope="module")
def report() -> object:
    return _corpus_script().run(CORPUS)


@needs_corpus
def test_corpus_rates(report: object) -> None:
    r = report
    assert r.loaded == r.files >= 59 and r.load_failures == []  # type: ignore[attr-defined]
    assert r.parsed / r.expressions >= 0.95, r.parse_failures  # type: ignore[attr-defined]
    assert r.evaluated / r.expressions >= 0.85, r.evaluation_failures  # type: ignore[attr-defined]
    assert r.evaluation_crashes == 0  # type: ignore[attr-defined]


@needs_corpus
def test_every_loadable_whole_policy_runs_a_request(report: object) -> None:
    """Each whole policy's request through the engine, backend call included (scripts/corpus_run.py): none reaches
    an unsupported policy or an internal error. Only the snippets whose C# does not parse are not loadable."""
    runs = report.runs  # type: ignore[attr-defined]
    assert runs.loadable >= 51 and runs.policies - runs.loadable <= 3, runs.not_loadable
    assert runs.stopped == []
    assert runs.ran == runs.loadable
    assert sum(runs.statuses.values()) == runs.ran and runs.statuses.get(200, 0) >= 25


@needs_corpus
def test_policies_doc_is_current(report: object) -> None:
    """Regenerate with: scripts/corpus.py --policies-doc docs/policies.md"""
    written = (ROOT / "docs" / "policies.md").read_text("utf-8")
    assert written == _corpus_script().policies_doc(report)


def test_policies_doc_lists_every_catalog_policy_with_its_status() -> None:
    from apim_mi.policy.catalog import CATALOG
    from apim_mi.policy.statements import HANDLERS

    rows = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]+) \|", (ROOT / "docs" / "policies.md").read_text(), re.M))
    assert set(rows) == set(CATALOG)
    for name, status in rows.items():
        assert (status.strip() == "runs") == (name in HANDLERS), name


def test_every_catalog_policy_marked_supported_has_a_handler() -> None:
    from apim_mi.policy.catalog import CATALOG
    from apim_mi.policy.statements import HANDLERS

    missing = [n for n, s in CATALOG.items() if s.supported and n not in HANDLERS and n != "include-fragment"]
    assert missing == []


def test_synthesized_named_values_fit_their_names() -> None:
    sample = _corpus_script().named_value_sample
    import base64

    assert len(base64.b64decode(sample("AES-Key"))) == 32 and len(base64.b64decode(sample("AES-IV"))) == 16
    assert sample("bff-baseurl").startswith("https://") and sample("cachetime").isdigit()
    assert Path(__file__).name == "test_corpus.py"
