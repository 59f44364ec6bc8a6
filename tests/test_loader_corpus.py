"""The regression corpus (Azure/api-management-policy-snippets, not vendored): every policy file must load.

Get it with ``git clone --depth 1 https://github.com/Azure/api-management-policy-snippets
.corpus/api-management-policy-snippets``; without it this test is skipped. ``scripts/corpus.py`` prints the numbers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The shared checkout beside the repository (../shared/corpus) when it is there, else .corpus/ in the checkout.
CORPUS = next(
    (p for p in (ROOT.parent / "shared" / "corpus" / "api-management-policy-snippets",
                 ROOT / ".corpus" / "api-management-policy-snippets") if p.is_dir()),
    ROOT / ".corpus" / "api-management-policy-snippets",
)  # fmt: skip


def _corpus_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("apim_mi_corpus_script", ROOT / "scripts" / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not CORPUS.is_dir(),
    reason="policy snippet corpus not present: git clone --depth 1 "
    "https://github.com/Azure/api-management-policy-snippets .corpus/api-management-policy-snippets",
)
def test_every_corpus_policy_loads() -> None:
    report = _corpus_script().run(CORPUS, evaluate=False)
    assert report.files >= 59
    assert report.load_failures == []
    assert report.loaded == report.files
    assert report.expressions >= 430  # apim.md §0: 436 expressions in the snippets @87225c2


def test_corpus_script_explains_how_to_get_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _corpus_script().main(["--corpus", str(tmp_path / "missing")]) == 2
    assert "git clone --depth 1 https://github.com/Azure/api-management-policy-snippets" in capsys.readouterr().err
