"""validate-odata-request through the engine: OData-Version bounds, max-size and system query options, with the
validate-* family's 400 body and error variable."""

from __future__ import annotations

from apim_mi.policy import engine
from test_statements import body_json, make_run, policies


async def inbound(policy: str, url: str = "https://api.test/odata/People", headers: list[tuple[str, str]] | None = None,
                  ) -> engine.PolicyRun:  # fmt: skip
    run = make_run(policies(policy), url=url, headers=[("Host", "api.test"), *(headers or [])])
    await engine.run_inbound(run)
    return run


async def test_a_conforming_request_passes_with_the_default_version() -> None:
    run = await inbound('<validate-odata-request error-variable-name="odata" />',
                        url="https://api.test/odata/People?$top=5&$skip=10&$count=true&$orderby=Name desc,Age"
                            "&$filter=Age gt 30&$select=Name&custom=1")  # fmt: skip
    assert run.response is None and run.forward
    assert run.context.variables["odata"] == []


async def test_odata_version_bounds_answer_400_with_the_first_error() -> None:
    policy = '<validate-odata-request min-odata-version="4.0" max-odata-version="4.01" error-variable-name="odata" />'
    run = await inbound(policy, headers=[("OData-Version", "3.0")])
    assert run.response is not None and run.response.status_code == 400
    assert body_json(run.response) == {"statusCode": 400, "message": "The OData-Version '3.0' is lower than the "
                                       "minimum supported version 4.0."}  # fmt: skip
    assert run.context.last_error.reason == "Bad request" and run.context.last_error.source == "validate-odata-request"
    assert run.context.variables["odata"] == [{
        "Name": "OData-Version", "Type": "RequestHeader", "ValidationRule": "Version",
        "Details": "The OData-Version '3.0' is lower than the minimum supported version 4.0.", "Action": "prevent",
    }]  # fmt: skip
    too_new = await inbound(policy, headers=[("OData-Version", "5.0")])
    assert body_json(too_new.response)["message"] == ("The OData-Version '5.0' is higher than the maximum supported "
                                                      "version 4.01.")  # fmt: skip
    garbage = await inbound(policy, headers=[("OData-Version", "four")])
    assert body_json(garbage.response)["message"] == ("The OData-Version header value 'four' is not a valid OData "
                                                      "version.")  # fmt: skip
    assert (await inbound(policy, headers=[("OData-Version", "4.01")])).response is None


async def test_system_query_options_follow_the_version() -> None:
    strict = await inbound("<validate-odata-request />", url="https://api.test/odata/People?$top=-1")
    assert body_json(strict.response) == {"statusCode": 400, "message": "The value '-1' of the query option '$top' "
                                          "is not a non-negative integer."}  # fmt: skip
    unknown = await inbound("<validate-odata-request />", url="https://api.test/odata/People?$compute=x")
    assert body_json(unknown.response)["message"] == ("The query parameter '$compute' is not a system query option "
                                                      "of OData 4.0.")  # fmt: skip
    newer = await inbound('<validate-odata-request default-odata-version="4.01" />',
                          url="https://api.test/odata/People?$compute=x&TOP=3")  # fmt: skip
    assert newer.response is None  # 4.01: $compute exists, options are case-insensitive and need no $
    twice = await inbound('<validate-odata-request default-odata-version="4.01" />',
                          url="https://api.test/odata/People?$top=1&top=2")  # fmt: skip
    assert body_json(twice.response)["message"] == "The query option '$top' is specified more than once."
    count = await inbound("<validate-odata-request />", url="https://api.test/odata/People?$count=yes")
    assert body_json(count.response)["message"] == ("The value 'yes' of the query option '$count' is not 'true' or "
                                                    "'false'.")  # fmt: skip
    empty = await inbound("<validate-odata-request />", url="https://api.test/odata/People?$select=")
    assert body_json(empty.response)["message"] == "The query option '$select' has no value."


async def test_max_size_counts_the_payload() -> None:
    run = await inbound('<validate-odata-request max-size="4" />')  # make_run's body is {"a": 1} (8 bytes)
    assert run.response.status_code == 400
    assert body_json(run.response)["message"] == "Request's body is 8 bytes long and it exceeds the limit of 4 bytes."
    assert (await inbound('<validate-odata-request max-size="8" />')).response is None
