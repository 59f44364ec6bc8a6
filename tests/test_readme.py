"""README.md and docs/: every ``apim-mi`` command parses (the safe ones run), every path exists, and the generated
parts of docs/reference.md (options, rules fields, supported policies, CLI help) match the code.

Regenerate the generated blocks after changing the code:
``APIM_MI_UPDATE_DOCS=1 .venv/bin/pytest tests/test_readme.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "reference.md", ROOT / "docs" / "troubleshooting.md",
        ROOT / "docs" / "operations.md", ROOT / "examples" / "README.md"]  # fmt: skip
REFERENCE = ROOT / "docs" / "reference.md"
UPDATE = os.environ.get("APIM_MI_UPDATE_DOCS") == "1"


# -- generators ---------------------------------------------------------------------------------------------------


def registered_options() -> dict[str, Any]:
    """The addon's options as mitmproxy registers them (``load()`` run through taddons)."""
    from apim_mi.addon import ApimMi
    from mitmproxy.test import taddons

    with taddons.context(ApimMi()) as tctx:
        return {name: opt for name, opt in tctx.options._options.items() if name.startswith("mi_")}


def shown_default(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value in ("", [], ()):
        return "(empty)"
    return f"`{value}`"


def _type(spec: Any) -> str:
    return {str: "string", int: "integer", bool: "boolean"}.get(spec, "list of strings")


def options_table() -> str:
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, opt in registered_options().items():
        text = opt.help.replace("<", "\\<").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(opt.typespec)} | {shown_default(opt.default)} | {text} |")
    return "\n".join(rows)


def _schema_type(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[-1]
    if "oneOf" in spec:
        return " or ".join(_schema_type(s, schema) for s in spec["oneOf"])
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    kind = spec.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array":
        items = spec.get("items", {})
        kind = f"list of {_schema_type(items, schema)}"
    if kind == "object" and "additionalProperties" in spec and isinstance(spec["additionalProperties"], dict):
        kind = f"map of name → {_schema_type(spec['additionalProperties'], schema)}"
    return kind


def rules_fields_table() -> str:
    from apim_mi.rules import rules_schema

    schema = rules_schema()
    out = []
    for title, obj in (("top level", schema), ("a rule (`rules[]`)", schema["$defs"]["rule"]),
                       ("`match`", schema["$defs"]["match"])):  # fmt: skip
        required = set(obj.get("required", ()))
        out += [f"**{title}**", "", "| field | type | required | meaning |", "|---|---|---|---|"]
        for name, spec in obj["properties"].items():
            desc = spec.get("description", "").replace("|", "\\|")
            req = "yes" if name in required else ""
            out.append(f"| `{name}` | {_schema_type(spec, schema)} | {req} | {desc} |")
        out.append("")
    return "\n".join(out).rstrip()


def policies_list() -> str:
    from apim_mi.policy.statements import HANDLERS

    names = sorted(n for n in HANDLERS if n != "base")
    return ", ".join(f"`{n}`" for n in names) + ", and `<base/>` for scope composition."


def _help(parser: argparse.ArgumentParser) -> str:
    os.environ["COLUMNS"] = "110"
    try:
        return parser.format_help().rstrip()
    finally:
        os.environ.pop("COLUMNS", None)


def cli_help(which: str) -> str:
    from apim_mi import cli
    from apim_mi.emulator import cli as emulator_cli

    if which == "emulator":
        return "```text\n" + _help(emulator_cli.build_parser(prog="apim-mi emulator")) + "\n```"
    parser = cli.build_parser()
    if which == "main":
        return "```text\n" + _help(parser) + "\n```"
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "```text\n" + _help(sub.choices[which]) + "\n```"


GENERATED = {
    "options": options_table,
    "rules-fields": rules_fields_table,
    "policies": policies_list,
    "cli-main": lambda: cli_help("main"),
    "cli-validate": lambda: cli_help("validate"),
    "cli-token": lambda: cli_help("token"),
    "cli-emulator": lambda: cli_help("emulator"),
    "cli-trace": lambda: cli_help("trace"),
}
_BLOCK = re.compile(r"(<!-- generated: ([\w-]+)[^>]*-->\n)(.*?)\n?<!-- /generated -->", re.S)


def test_reference_generated_blocks_are_current() -> None:
    text = REFERENCE.read_text()
    found = {m.group(2) for m in _BLOCK.finditer(text)}
    assert found == set(GENERATED), f"generated blocks in docs/reference.md: {sorted(found)}"
    fresh = _BLOCK.sub(lambda m: m.group(1) + GENERATED[m.group(2)]() + "\n<!-- /generated -->", text)
    if UPDATE and fresh != text:
        REFERENCE.write_text(fresh)
        text = fresh
    assert fresh == text, "docs/reference.md is stale: run APIM_MI_UPDATE_DOCS=1 .venv/bin/pytest tests/test_readme.py"


# -- README options table -----------------------------------------------------------------------------------------


def test_readme_options_table_matches_the_addon() -> None:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(mi_\w+)` \| ([^|]*) \|", text, re.M)
    options = registered_options()
    assert [name for name, _ in rows] == list(options), "README options table: names or order differ from load()"
    for name, default in rows:
        value = options[name].default
        cell = default.strip()
        if isinstance(value, bool):
            assert cell == f"`{str(value).lower()}`", name
        elif value in ("", []):
            assert not cell.startswith("`"), f"{name}: README shows a default, the addon has none"
        else:
            assert cell == f"`{value}`", f"{name}: README says {cell}, the addon {value!r}"


def test_readme_commands_are_registered() -> None:
    from apim_mi.addon import ApimMi
    from mitmproxy.test import taddons

    with taddons.context(ApimMi()) as tctx:
        commands = {c for c in tctx.master.commands.commands if c.startswith("mi.")}
    for doc in (ROOT / "README.md", REFERENCE):
        mentioned = set(re.findall(r"`(mi\.\w+)`", doc.read_text()))
        assert mentioned == commands, (doc.name, mentioned, commands)


# -- commands and paths -------------------------------------------------------------------------------------------


def _code_lines(path: Path) -> list[str]:
    """Lines of fenced shell code blocks (bash/sh/shell or untyped), continuations joined, comments stripped."""
    out: list[str] = []
    lang: str | None = None
    block: list[str] = []
    for line in path.read_text().splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, block = fence.group(1), []
        elif fence:
            if lang in ("", "bash", "sh", "shell"):
                for cmd in "\n".join(block).replace("\\\n", " ").splitlines():
                    cmd = re.sub(r"\s+#.*$", "", cmd).strip().removesuffix("&").strip()
                    if cmd and not cmd.startswith("#"):
                        out.append(cmd)
            lang = None
        elif lang is not None:
            block.append(line)
    return out


def apim_mi_commands() -> list[tuple[Path, str]]:
    cmds = []
    for doc in DOCS:
        for line in _code_lines(doc):
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                if part.startswith("docker "):  # apim-mi is the image's name there, not the command
                    continue
                m = re.search(r"\$\((?:\.venv/bin/)?apim-mi(\s[^)]*)\)", part) or re.search(
                    r"(?:^|\s|\$\()(?:\.venv/bin/)?apim-mi(\s.*)?$", part
                )
                if m:
                    cmds.append((doc, (m.group(1) or "").strip().rstrip(")")))
    return cmds


def test_docs_mention_apim_mi_commands() -> None:
    kinds = {args.split()[0] for _, args in apim_mi_commands() if args}
    assert {"validate", "token", "emulator", "trace"} <= kinds, kinds


@pytest.mark.parametrize("doc,args", apim_mi_commands(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_apim_mi_command_parses(doc: Path, args: str) -> None:
    from apim_mi import cli
    from apim_mi.emulator import cli as emulator_cli

    argv = shlex.split(args)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            if argv and argv[0] == "emulator":
                emulator_cli.config_from_args(emulator_cli.build_parser().parse_args(argv[1:]))
            elif argv and argv[0] in ("proxy", "web"):  # mitmdump's / mitmweb's own argument parser
                from mitmproxy import options
                from mitmproxy.tools import cmdline

                make = cmdline.mitmweb if argv[0] == "web" else cmdline.mitmdump
                make(options.Options()).parse_args(argv[1:])
            else:
                cli.build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code == 0, f"{doc.name}: 'apim-mi {args}' does not parse:\n{sink.getvalue()}"


def _runnable(args: str) -> bool:
    argv = shlex.split(args)
    if not argv:
        return False
    if argv[0] == "validate":
        return all(a.startswith("-") or (ROOT / a).exists() for a in argv[1:])  # files or folders of the repo
    return argv[0] == "token" and "emulator" in argv and "--raw" not in argv


@pytest.mark.parametrize("args", sorted({a for _, a in apim_mi_commands() if _runnable(a)}))
def test_apim_mi_command_runs(args: str) -> None:
    """validate and token --credential emulator run as written, from the repository root."""
    out = subprocess.run([sys.executable, "-m", "apim_mi.cli", *shlex.split(args)], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT / "addon")})  # fmt: skip
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert "Traceback" not in out.stderr


_PATH = re.compile(
    r"(?<![\w./~-])((?:addon|docs|examples|scripts|tests|\.ci)/[\w./-]*[\w/]|rules\.yaml|pyproject\.toml)"
)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_in_docs_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for m in _LINK.finditer(text):
        target = m.group(1)
        if "://" in target:
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip("/.")
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{doc.relative_to(ROOT)} names missing paths: {sorted(set(missing))}"


def test_xml_rules_attributes_match_the_schema() -> None:
    """The XML rules format is the YAML format in kebab-case: the same fields, so the two cannot drift apart."""
    xmlrules = pytest.importorskip("apim_mi.xmlrules")
    from apim_mi.rules import rules_schema

    schema = rules_schema()
    rule_fields = set(schema["$defs"]["rule"]["properties"]) - {"match"} | set(schema["$defs"]["match"]["properties"])
    assert {a.replace("-", "_") for a in xmlrules._RULE_ATTRS} == rule_fields
    assert {a.replace("-", "_") for a in xmlrules._ROOT_ATTRS} <= set(schema["properties"])


def test_rules_yaml_has_the_schema_modeline() -> None:
    from apim_mi.rules import SCHEMA_MODELINE

    assert (ROOT / "rules.yaml").read_text().splitlines()[0] == SCHEMA_MODELINE


def test_architecture_lists_every_module() -> None:
    """docs/architecture.md's table names every module of the package (subpackages as a whole)."""
    package = ROOT / "addon" / "apim_mi"
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+(?:\.py|/))`", text, re.M))
    modules = {p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {f"policy/{p.name}" for p in (package / "policy").glob("*.py") if p.name != "__init__.py"}
    modules |= {"emulator/", "policy/expressions/", "policy/statements/", "policy/ai/"}
    sources = package / "sources"
    modules |= {f"sources/{p.name}{'/' if p.is_dir() else ''}" for p in sources.iterdir()
                if p.name not in ("__init__.py", "__pycache__")} if sources.is_dir() else set()  # fmt: skip
    assert modules == listed
