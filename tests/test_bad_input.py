"""The bad-input catalogue: every broken rules or policy file in tests/data/bad gives one clear error with its
location (file:line:column, or APIM's "Error in element 'x' on line L, column C"), never a traceback; also through
`mitmdump`, which must refuse to start with that one message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from apim_mi.errors import LoadError
from apim_mi.policy.loader import load_policy_file
from apim_mi.rules import load_rules
from proxy import run_mitmdump_expecting_exit

BAD = Path(__file__).resolve().parent / "data" / "bad"
EXPECTED: dict[str, str] = json.loads((BAD / "expected.json").read_text())
LOCATED = re.compile(r"^[\w.-]+(:\d+:\d+: |: Error (in element '[\w-]+' )?on line \d+, column \d+: )")


def test_catalogue_is_complete() -> None:
    files = sorted(p.name for p in BAD.glob("*.*ml"))
    assert len(files) >= 40
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_broken_file_gives_one_located_error(name: str) -> None:
    path = BAD / name
    with pytest.raises(LoadError) as info:
        load_rules(path) if path.suffix == ".yaml" else load_policy_file(path)
    message = str(info.value).replace(f"{BAD}/", "").replace(str(BAD.resolve()), "<dir>")
    assert message == EXPECTED[name]
    assert LOCATED.match(message), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("name", ["yaml-unknown-rule-field.yaml", "yaml-unclosed-flow.yaml"])
def test_mitmdump_refuses_to_start_with_the_same_message(name: str, tmp_path: Path) -> None:
    rc, out = run_mitmdump_expecting_exit(["--set", f"mi_rules={BAD / name}"], confdir=tmp_path)
    assert rc != 0
    assert EXPECTED[name].split(":", 1)[1] in out
    assert "Traceback" not in out
