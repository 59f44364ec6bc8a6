"""Validation against the API definition a rule names (``openapi:``): validate-parameters, validate-headers,
validate-content, validate-status-code; and mock-response with the definition's examples.

Errors are APIM's (the reference's "Validation errors" table): ``{Name, Type, ValidationRule, Details, Action}``
objects, listed in ``errors-variable-name``. ``detect`` only records; ``prevent`` answers 400 (inbound) or 502
(outbound) with the public message as ``{"statusCode": N, "message": …}`` and ``context.LastError`` reason
"Bad request" / "Response not allowed" with the details as message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...errors import PolicyError
from ..context import Body, Headers, Request, Response
from ..engine import UNVERIFIED, PolicyRun, Scope
from ..model import Statement
from ._common import ResponseError, current_response, int_attr, json_response, reason_phrase, str_attr

INTERNAL = "The request could not be processed due to an internal error. Contact the API owner."
ACTIONS = ("ignore", "detect", "prevent")
KINDS = {"query": ("query parameter", "QueryParameter"), "path": ("path parameter", "PathParameter"),
         "header": ("header", "RequestHeader")}  # fmt: skip
#: Headers every HTTP exchange carries; never "unspecified" parameters or response headers (inferred: APIM does
#: not list them, and a strict policy would otherwise refuse every browser or curl request).
STANDARD_HEADERS = frozenset(h.lower() for h in (
    "Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language", "Accept-Charset", "Connection", "Keep-Alive",
    "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Via",
    "Cache-Control", "Pragma", "Expect", "Origin", "Referer", "Cookie", "Authorization", "Proxy-Authorization",
    "Proxy-Connection", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "If-Match",
    "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Range", "Ocp-Apim-Subscription-Key",
    "Ocp-Apim-Trace", "Apim-Debug-Authorization", "Traceparent", "Tracestate", "Request-Id", "Date", "Server",
    "Set-Cookie", "Vary", "ETag", "Last-Modified", "Expires", "Age", "Location", "Strict-Transport-Security",
    "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
    "WWW-Authenticate", "X-Content-Type-Options", "Content-Disposition", "Accept-Ranges", "Content-Range",
))  # fmt: skip


@dataclass
class ValidationError:
    name: str
    type: str
    rule: str
    details: str
    public: str
    action: str

    def as_variable(self) -> dict[str, str]:
        return {"Name": self.name, "Type": self.type, "ValidationRule": self.rule, "Details": self.details,
                "Action": self.action}  # fmt: skip


async def _action(run: PolicyRun, stmt: Statement | None, name: str, scope: Scope, fallback: str) -> str:
    if stmt is None or name not in stmt.attrs:
        return fallback
    value = (await str_attr(run, stmt, name, scope) or "").strip().lower()
    if value not in ACTIONS:
        raise PolicyError(stmt.name, f"The '{name}' attribute must be ignore, detect or prevent (got '{value}').",
                          "ExpressionValueEvaluationFailure")
    return value


def _definition(run: PolicyRun) -> Any:
    return getattr(run.policy, "api_definition", None)


def _operation(run: PolicyRun) -> tuple[Any, dict[str, str]] | None:
    definition = _definition(run)
    if definition is None:
        return None
    request = run.context.request
    return definition.operation(request.method, request.url.path)


def _schema_missing(action: str) -> ValidationError:
    return ValidationError("", "ApiSchema", "", "API's schema does not exist or it could not be resolved.", INTERNAL,
                           action)


def _finish(run: PolicyRun, stmt: Statement, scope: Scope, errors: list[ValidationError], outbound: bool) -> None:
    """Records the errors (variable, trace) and answers like APIM when one of them says prevent."""
    errors = [e for e in errors if e.action != "ignore"]
    variable = stmt.attr("errors-variable-name")
    if variable:
        run.context.variables[variable] = [e.as_variable() for e in errors]
    for e in errors:
        run.trace.add(scope.section, stmt.name, {"message": e.details, "error": e.as_variable(), **UNVERIFIED})
    if not errors:
        run.trace.add(scope.section, stmt.name, {"message": "Validation passed.", **UNVERIFIED})
    prevented = next((e for e in errors if e.action == "prevent"), None)
    if prevented is None:
        return
    code, reason = (502, "Response not allowed") if outbound else (400, "Bad request")
    raise ResponseError(stmt.name, prevented.details, reason, json_response(code, prevented.public))


# ------------------------------------------------------------------------------------ parameter and header values


def _coerce(text: str, schema: dict[str, Any], definition: Any) -> Any:
    """A parameter's text as the JSON value its schema describes; ValueError when it cannot be parsed."""
    schema = definition.resolve(schema)
    kind = schema.get("type")
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"'{text}' is not a boolean")
        return text.lower() == "true"
    if kind == "array":
        items = schema.get("items") or {}
        return [_coerce(part, items, definition) for part in text.split(",")] if text else []
    return text


def _check_value(definition: Any, param: Any, values: list[str], kind: str, type_: str, action: str,
                 request: bool) -> ValidationError | None:  # fmt: skip
    """One specified parameter or header: multiple values, parsing, schema."""
    from ...openapi import schema_validator

    subject = "Request" if request else "Response"
    schema = definition.resolve(param.schema) if param.schema else {}
    if len(values) > 1 and schema.get("type") != "array":
        text = f"{subject} cannot contain multiple values for the {kind} {param.name}."
        return ValidationError(param.name, type_, "IncorrectMessage", text, text if request else INTERNAL, action)
    joined = ",".join(values)
    try:
        value = _coerce(joined, param.schema, definition)
    except ValueError as e:
        details = f"Value of the {kind} {param.name} cannot be parsed according to the definition. {e}"
        public = f"Value of the {kind} {param.name} couldn't be parsed according to the definition. {e}"
        return ValidationError(param.name, type_, "IncorrectMessage", details, public if request else INTERNAL, action)
    error = next(iter(schema_validator(definition, param.schema).iter_errors(value)), None) if param.schema else None
    if error is None:
        return None
    details = f"Value of the {kind} {param.name} does not conform to the definition. {error.message}"
    public = f"The value of the {kind} {param.name} does not conform to the definition. {error.message}"
    return ValidationError(param.name, type_, "IncorrectMessage", details, public if request else INTERNAL, action)


def _required_missing(param: Any, kind: str, type_: str, action: str) -> ValidationError:
    text = f"Value of the {kind} {param.name} does not conform to the definition. Required {kind} is missing."
    return ValidationError(param.name, type_, "IncorrectMessage", text, text, action)


async def _overrides(run: PolicyRun, node: Statement | None, scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in node.children_named("parameter") if node is not None else []:
        name = (await str_attr(run, p, "name", scope, source="validate-parameters") or "").lower()
        out[name] = await _action(run, p, "action", scope, "ignore")
    return out


async def validate_parameters(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    specified = await _action(run, stmt, "specified-parameter-action", scope, "ignore")
    unspecified = await _action(run, stmt, "unspecified-parameter-action", scope, "ignore")
    found = _operation(run)
    if found is None:
        _finish(run, stmt, scope, [_schema_missing(max(specified, unspecified, key=ACTIONS.index))], False)
        return
    operation, path_values = found
    definition = _definition(run)
    request = run.context.request
    errors: list[ValidationError] = []
    for location, node_name in (("header", "headers"), ("query", "query"), ("path", "path")):
        node = stmt.child(node_name)
        spec_action = await _action(run, node, "specified-parameter-action", scope, specified)
        unspec_action = await _action(run, node, "unspecified-parameter-action", scope, unspecified)
        overrides = await _overrides(run, node, scope)
        kind, type_ = KINDS[location]
        params = {p.name.lower(): p for p in operation.parameters if p.location == location}
        present = _present(request, location, path_values)
        for key, param in params.items():
            action = overrides.get(key, spec_action)
            if action == "ignore":
                continue
            values = present.get(key)
            if not values:
                if param.required:
                    errors.append(_required_missing(param, kind, type_, action))
                continue
            error = _check_value(definition, param, values, kind, type_, action, True)
            if error is not None:
                errors.append(error)
        for key in present:
            if key in params or (location == "header" and key in STANDARD_HEADERS):
                continue
            action = overrides.get(key, unspec_action)
            name = _original_name(request, location, key)
            text = f"Unspecified {kind} {name} is not allowed."
            errors.append(ValidationError(name, type_, "Unspecified", text, text, action))
    _finish(run, stmt, scope, errors, False)


def _present(request: Request, location: str, path_values: dict[str, str]) -> dict[str, list[str]]:
    if location == "header":
        return {n.lower(): request.headers.get_all(n) for n in request.headers.names()}
    if location == "query":
        return {n.lower(): request.url.query.get_all(n) for n in request.url.query.names()}
    return {k.lower(): [v] for k, v in path_values.items()}


def _original_name(request: Request, location: str, key: str) -> str:
    names = request.headers.names() if location == "header" else request.url.query.names()
    return next((n for n in names if n.lower() == key), key)


async def validate_headers(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """The response's headers against the definition's response headers for its status code."""
    specified = await _action(run, stmt, "specified-header-action", scope, "ignore")
    unspecified = await _action(run, stmt, "unspecified-header-action", scope, "ignore")
    overrides: dict[str, str] = {}
    for h in stmt.children_named("header"):
        overrides[(await str_attr(run, h, "name", scope, source=stmt.name) or "").lower()] = \
            await _action(run, h, "action", scope, "ignore")  # fmt: skip
    found = _operation(run)
    response = current_response(run)
    matched = found[0].response(response.status_code) if found is not None else None
    if found is None or matched is None:
        _finish(run, stmt, scope, [_schema_missing(max(specified, unspecified, key=ACTIONS.index))], True)
        return
    definition = _definition(run)
    from ...openapi import Parameter

    declared = {}
    for name, raw in (matched[1].get("headers") or {}).items():
        header = definition.resolve(raw)
        declared[name.lower()] = Parameter(name, "header", bool(header.get("required")), header.get("schema") or {})
    errors: list[ValidationError] = []
    for key, param in declared.items():
        action = overrides.get(key, specified)
        values = response.headers.get_all(param.name)
        if action == "ignore" or not values:
            continue
        error = _check_value(definition, param, values, "header", "ResponseHeader", action, False)
        if error is not None:
            errors.append(error)
    for name in response.headers.names():
        key = name.lower()
        if key in declared or key in STANDARD_HEADERS:
            continue
        errors.append(ValidationError(name, "ResponseHeader", "Unspecified", f"Unspecified header {name} is not "
                                      "allowed.", INTERNAL, overrides.get(key, unspecified)))  # fmt: skip
    _finish(run, stmt, scope, errors, True)


async def validate_status_code(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    unspecified = await _action(run, stmt, "unspecified-status-code-action", scope, "ignore")
    response = current_response(run)
    found = _operation(run)
    if found is None:
        _finish(run, stmt, scope, [_schema_missing(unspecified)], True)
        return
    code = response.status_code
    errors: list[ValidationError] = []
    if found[0].response(code) is None:
        action = unspecified
        for sc in stmt.children_named("status-code"):
            if await int_attr(run, sc, "code", scope, source=stmt.name) == code:
                action = await _action(run, sc, "action", scope, unspecified)
        errors.append(ValidationError(str(code), "StatusCode", "Unspecified",
                                      f"Response status code {code} is not allowed.", INTERNAL, action))  # fmt: skip
    _finish(run, stmt, scope, errors, True)


# -------------------------------------------------------------------------------------------------- validate-content


def _strict(schema: Any, allow: bool) -> Any:
    """``allow-additional-properties``: every object schema gets ``additionalProperties`` set to ``allow``."""
    if isinstance(schema, dict):
        out = {k: _strict(v, allow) for k, v in schema.items()}
        if out.get("type") == "object" or "properties" in out:
            out["additionalProperties"] = allow
        return out
    if isinstance(schema, list):
        return [_strict(v, allow) for v in schema]
    return schema


def _message(run: PolicyRun, scope: Scope) -> tuple[Request | Response, bool]:
    if scope.request is not None:
        return scope.request, False
    return current_response(run), True


async def validate_content(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    message, outbound = _message(run, scope)
    side = "ResponseBody" if outbound else "RequestBody"
    whose = "response" if outbound else "request"
    body = message.body.content if message.body is not None else b""
    errors: list[ValidationError] = []
    max_size = await int_attr(run, stmt, "max-size", scope)
    if max_size is not None and len(body) > max_size:
        details = f"{whose.capitalize()}'s body is {len(body)} bytes long and it exceeds the configured limit of " \
                  f"{max_size} bytes."  # fmt: skip
        public = INTERNAL if outbound else f"Request's body is {len(body)} bytes long and it exceeds the limit of " \
                                           f"{max_size} bytes."  # fmt: skip
        errors.append(ValidationError("", side, "SizeLimit", details, public,
                                      await _action(run, stmt, "size-exceeded-action", scope, "ignore")))  # fmt: skip
    content_type = await _mapped_content_type(run, stmt, scope, message)
    element = None
    for c in stmt.children_named("content"):
        wanted = (await str_attr(run, c, "type", scope, source=stmt.name) or "").strip().lower()
        if wanted == content_type.lower() or (not wanted and c.attrs.get("validate-as") is not None and not element):
            element = c
    if element is None:
        if content_type and body:
            text = f"Unspecified content type {content_type} is not allowed."
            errors.append(ValidationError(content_type, side, "Unspecified", text, INTERNAL if outbound else text,
                                          await _action(run, stmt, "unspecified-content-type-action", scope,
                                                        "ignore")))  # fmt: skip
        _finish(run, stmt, scope, errors, outbound)
        return
    action = await _action(run, element, "action", scope, "ignore")
    if action != "ignore":
        error = await _validate_body(run, element, scope, message, content_type, side, whose, action, outbound)
        if error is not None:
            errors.append(error)
    _finish(run, stmt, scope, errors, outbound)


async def _mapped_content_type(run: PolicyRun, stmt: Statement, scope: Scope, message: Request | Response) -> str:
    """The message's media type after ``<content-type-map>`` (missing/any values, ``from``/``when`` → ``to``)."""
    from ..expressions import to_policy_string

    actual = (message.headers.get("Content-Type") or "").split(";", 1)[0].strip()
    mapping = stmt.child("content-type-map")
    if mapping is None:
        return actual
    for t in mapping.children_named("type"):
        target = await str_attr(run, t, "to", scope, source=stmt.name) or ""
        source = await str_attr(run, t, "from", scope, source=stmt.name)
        if source is not None and source.strip().lower() == actual.lower():
            return target
        if "when" in t.attrs:
            from ..engine import evaluate

            if to_policy_string(await evaluate(run, t.attrs["when"], stmt.name, scope)).lower() == "true":
                return target
    if not actual:
        return await str_attr(run, mapping, "missing-content-type-value", scope, source=stmt.name) or ""
    return await str_attr(run, mapping, "any-content-type-value", scope, source=stmt.name) or actual


async def _validate_body(run: PolicyRun, element: Statement, scope: Scope, message: Request | Response,
                         content_type: str, side: str, whose: str, action: str,
                         outbound: bool) -> ValidationError | None:  # fmt: skip
    from ...openapi import definition_name, schema_validator

    validate_as = (await str_attr(run, element, "validate-as", scope, source="validate-content") or "json").lower()
    text = (message.body.content if message.body is not None else b"").decode("utf-8", "replace")
    if validate_as in ("xml", "soap"):
        from lxml import etree

        try:
            etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError as e:
            return _incorrect(content_type, side, whose, "body", str(e), action, outbound)
        return None
    schema = await _body_schema(run, element, scope, content_type, outbound)
    if schema is None:
        return ValidationError(content_type, side, "MissingDefinition", f"API's schema does not contain definition "
                               f"for the content type {content_type}.", INTERNAL, action)  # fmt: skip
    name = definition_name(schema)
    allow = element.attrs.get("allow-additional-properties")
    if allow is not None:
        schema = _strict(_inline(run, schema), (await str_attr(run, element, "allow-additional-properties", scope,
                                                               source="validate-content") or "").lower() == "true")
    try:
        value = json.loads(text)
    except ValueError as e:
        return _incorrect(content_type, side, whose, name, str(e), action, outbound)
    from jsonschema.exceptions import best_match

    error = best_match(schema_validator(_definition(run), schema).iter_errors(value))
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    return _incorrect(content_type, side, whose, name,
                      f"{error.message}" + (f" Path: {path}" if path else ""), action, outbound)  # fmt: skip


def _incorrect(content_type: str, side: str, whose: str, name: str, why: str, action: str,
               outbound: bool) -> ValidationError:  # fmt: skip
    details = f"Body of the {whose} does not conform to the definition {name}, which is associated with the content " \
              f"type {content_type}. {why}"  # fmt: skip
    return ValidationError(content_type, side, "IncorrectMessage", details, INTERNAL if outbound else details, action)


def _inline(run: PolicyRun, schema: Any, depth: int = 0) -> Any:
    """``$ref``s followed (bounded), so ``allow-additional-properties`` reaches the referenced objects too."""
    definition = _definition(run)
    if depth > 16:
        return schema
    if isinstance(schema, dict):
        resolved = definition.resolve(schema)
        return {k: _inline(run, v, depth + 1) for k, v in resolved.items()}
    if isinstance(schema, list):
        return [_inline(run, v, depth + 1) for v in schema]
    return schema


async def _body_schema(run: PolicyRun, element: Statement, scope: Scope, content_type: str,
                       outbound: bool) -> Any:  # fmt: skip
    """``schema-id``/``schema-ref`` name a component of the definition; otherwise the operation's body schema."""
    definition = _definition(run)
    if definition is None:
        return None
    schema_id = await str_attr(run, element, "schema-id", scope, source="validate-content")
    if schema_id:
        ref = await str_attr(run, element, "schema-ref", scope, source="validate-content")
        target = f"#/components/schemas/{schema_id}" if not ref else ref if ref.startswith("#") else f"#/{ref}"
        try:
            definition.pointer(target)
        except ValueError:
            return None
        return {"$ref": target}
    found = _operation(run)
    if found is None:
        return None
    operation = found[0]
    if outbound:
        matched = operation.response(current_response(run).status_code)
        content = (matched[1].get("content") or {}) if matched else {}
    else:
        content = operation.request_content
    entry = next((v for k, v in content.items() if k.lower() == content_type.lower()), None)
    return (entry or {}).get("schema")


# ----------------------------------------------------------------------------------------------------- mock-response


def example_of(definition: Any, media: dict[str, Any]) -> Any:
    """A media type's example: ``example``, the first of ``examples``, or the schema's ``example``."""
    if "example" in media:
        return media["example"]
    for example in (media.get("examples") or {}).values():
        resolved = definition.resolve(example)
        if isinstance(resolved, dict) and "value" in resolved:
            return resolved["value"]
    schema = definition.resolve(media.get("schema") or {})
    return schema.get("example") if isinstance(schema, dict) else None


async def mock_response(run: PolicyRun, stmt: Statement, scope: Scope) -> None:
    """The operation's documented response for ``status-code`` (default 200), with the
    example for ``content-type`` (default: its first media type), as APIM mocks from the API definition."""
    code = await int_attr(run, stmt, "status-code", scope) or 200
    content_type = await str_attr(run, stmt, "content-type", scope)
    found = _operation(run)
    body, chosen_type, note = b"", content_type, "no API definition matches the request, so the body is empty"
    if found is not None:
        operation = found[0]
        matched = operation.response(code)
        content = (matched[1].get("content") or {}) if matched else {}
        media_type = content_type or next(iter(content), None)
        media = next((v for k, v in content.items() if media_type and k.lower() == media_type.lower()), None)
        if media is not None:
            example = example_of(_definition(run), media)
            chosen_type = media_type
            if example is not None:
                body = example.encode() if isinstance(example, str) else json.dumps(example).encode()
                note = f"example of {operation.method} {operation.template} {code} {media_type}"
            else:
                note = f"{operation.method} {operation.template} {code} {media_type} has no example"
        else:
            note = f"{operation.method} {operation.template} documents no {content_type or 'content'} for {code}"
    headers = Headers([("Content-Type", chosen_type)] if chosen_type else [])
    run.response = run.context.response = Response(code, reason_phrase(code), headers, Body(body))
    run.trace.add(scope.section, "mock-response", {"message": f"Mocked response {code} returned ({note}).",
                                                   **UNVERIFIED})


HANDLERS = {
    "validate-parameters": validate_parameters,
    "validate-headers": validate_headers,
    "validate-content": validate_content,
    "validate-status-code": validate_status_code,
    "mock-response": mock_response,
}
