"""Schemathesis against the app's own OpenAPI schema, on the real server over HTTP: generated valid
and invalid requests for every operation, a bounded number each. No response may be a 5xx, and
every response must match the schema (status code, content type, body)."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import Server

pytestmark = pytest.mark.slow

EXAMPLES = 50  # per operation: enough to reach every field's edges, few enough for CI


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_api_answers_every_generated_request_within_its_schema(server: Server) -> None:
    """One Hypothesis run per operation (Schemathesis's pytest plugin does not load under this
    pytest, so its strategies are driven directly)."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations: list[Any] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation the schema describes in a way Schemathesis cannot use
            raise AssertionError(f"the OpenAPI schema has an unusable operation: {result.err()}")
        operations.append(result.ok())
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {"POST /v1/ask", "POST /v1/documents"}
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=60)

        run()
