"""validate-odata-request: a request to an OData API checked against the OData protocol (versions 4.0 and 4.01).

What it checks, from the reference ("validates the request URL, headers, and parameters … to ensure conformance
with the OData specification") and OData 4.01 Part 1/Part 2: the ``OData-Version`` (and ``OData-MaxVersion``)
header, within ``min-odata-version``/``max-odata-version``; ``default-odata-version`` when the header is absent; the
payload against ``max-size``; the system query options — known names (4.0: ``$``-prefixed and lower case; 4.01 also
case-insensitive and without the ``$``), none twice, ``$top``/``$skip``/``$levels`` non-negative integers,
``$count`` true/false, ``$orderby`` items ``expr [asc|desc]``, nothing empty. APIM documents neither its error texts
nor the status: errors follow the validate-* family (``{Name, Type, ValidationRule, Details, Action}`` in
``error-variable-name``, 400 ``{"statusCode": 400, "message": …}``, LastError "Bad request"), and the trace says
the wording is inferred.
"""

from __future__ import annotations

import re

from ..engine import PolicyRun, Scope
from ..model import Statement
from ._common import int_attr, str_attr
from .validation import ValidationError
from .validation import _finish as record

#: OData 4.01 Part 2 §5 system query options (4.0's set, plus $compute, $index and $schemaversion of 4.01)
SYSTEM_OPTIONS_40 = frozenset({"$filter", "$select", "$expand", "$orderby", "$top", "$skip", "$count", "$search",
                               "$format", "$skiptoken", "$deltatoken", "$apply", "$levels", "$id"})  # fmt: skip
SYSTEM_OPTIONS_401 = SYSTEM_OPTIONS_40 | {"$compute", "$index", "$schemaversion"}
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\s*$")
_ORDER_ITEM = re.compile(r"^\s*\S.*?(\s+(asc|desc))?\s*$", re.IGNORECASE)


def parse_version(text: str) -> tuple[int, int] | None:
    match = _VERSION.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _error(name: str, type_: str, rule: str, details: str) -> ValidationError:
    return ValidationError(name, type_, rule, details, details, "prevent")


async def _version(run: PolicyRun, stmt: Statement, scope: Scope) -> tuple[tuple[int, int], list[ValidationError]]:
    """The request's OData version (its header, else default-odata-version) and what is wrong with it."""
    errors: list[ValidationError] = []
    bounds: dict[str, tuple[int, int]] = {}
    texts: dict[str, str] = {}
    for attribute in ("default-odata-version", "min-odata-version", "max-odata-version"):
        text = await str_attr(run, stmt, attribute, scope)
        if text is None:
            continue
        parsed = parse_version(text)
        if parsed is None:
            errors.append(_error(attribute, "Policy", "Version", f"The {attribute} '{text}' is not an OData version."))
        else:
            bounds[attribute], texts[attribute] = parsed, text.strip()
    headers = run.context.request.headers
    for name in ("OData-Version", "OData-MaxVersion"):
        text = headers.get(name)
        if text is not None and parse_version(text) is None:
            errors.append(_error(name, "RequestHeader", "Version", f"The {name} header value '{text}' is not a valid "
                                 "OData version."))  # fmt: skip
    header = headers.get("OData-Version")
    version = (parse_version(header) if header is not None else None) or bounds.get("default-odata-version", (4, 0))
    if header is not None and parse_version(header) is not None:
        low, high = bounds.get("min-odata-version"), bounds.get("max-odata-version")
        said = f"The OData-Version '{header.strip()}' is"
        if low is not None and version < low:
            details = f"{said} lower than the minimum supported version {texts['min-odata-version']}."
            errors.append(_error("OData-Version", "RequestHeader", "Version", details))
        if high is not None and version > high:
            details = f"{said} higher than the maximum supported version {texts['max-odata-version']}."
            errors.append(_error("OData-Version", "RequestHeader", "Version", details))
    return version, errors


def _option_name(name: str, version: tuple[int, int]) -> str | None:
    """The system query option ``name`` stands for, or None for a custom parameter. 4.01 (Part 2 §5): case-insensitive,
    and the ``$`` may be left out; 4.0: exactly ``$name``."""
    if version >= (4, 1):
        key = name.lower()
        key = key if key.startswith("$") else "$" + key
        return key if key in SYSTEM_OPTIONS_401 or name.startswith("$") else None
    return name if name.startswith("$") else None


def _check_option(option: str, value: str) -> str | None:
    """Why ``option=value`` breaks OData's syntax, or None."""
    if not value.strip() and option not in ("$search", "$skiptoken", "$deltatoken"):
        return f"The query option '{option}' has no value."
    if option in ("$top", "$skip", "$index") and not value.strip().isdigit():
        return f"The value '{value}' of the query option '{option}' is not a non-negative integer."
    if option == "$levels" and not (value.strip().isdigit() or value.strip().lower() == "max"):
        return f"The value '{value}' of the query option '$levels' is not a non-negative integer or 'max'."
    if option == "$count" and value.strip().lower() not in ("true", "false"):
        return f"The value '{value}' of the query option '$count' is not 'true' or 'false'."
    if option == "$orderby" and not all(_ORDER_ITEM.match(item) for item in value.split(",")):
        return f"The value '{value}' of the query option '$orderby' is not a list of 'expression [asc|desc]'."
    return None


def _query_errors(run: PolicyRun, version: tuple[int, int]) -> list[ValidationError]:
    known = SYSTEM_OPTIONS_401 if version >= (4, 1) else SYSTEM_OPTIONS_40
    seen: set[str] = set()
    errors: list[ValidationError] = []
    for name, value in run.context.request.url.query.pairs():
        option = _option_name(name, version)
        if option is None:
            continue
        if option not in known:
            errors.append(_error(name, "QueryParameter", "Unspecified", f"The query parameter '{name}' is not a "
                                 f"system query option of OData {version[0]}.{version[1]}."))  # fmt: skip
            continue
        if option in seen:
            errors.append(_error(name, "QueryParameter", "Multiple", f"The query option '{option}' is specified more "
                                 "than once."))  # fmt: skip
        seen.add(option)
        problem = _check_option(option, value)
        if problem:
            errors.append(_error(name, "QueryParameter", "IncorrectValue", problem))
    return errors


async def validate_odata_request(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    version, errors = await _version(run, stmt, scope)
    max_size = await int_attr(run, stmt, "max-size", scope)
    body = run.context.request.body
    size = len(body.content) if body is not None else 0
    if max_size is not None and size > max_size:
        errors.append(_error("", "RequestBody", "SizeLimit", f"Request's body is {size} bytes long and it exceeds "
                             f"the limit of {max_size} bytes."))  # fmt: skip
    errors += _query_errors(run, version)
    variable = stmt.attr("error-variable-name")  # this policy's name for validate-*'s errors-variable-name
    if variable:
        run.context.variables[variable] = [e.as_variable() for e in errors]
    record(run, stmt, scope, errors, outbound=False)


HANDLERS = {"validate-odata-request": validate_odata_request}
