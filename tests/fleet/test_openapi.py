"""The OpenAPI document is served, and a property-based run over every operation (schemathesis)
finds no server error and no response that breaks the documented schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 5


def test_openapi_document_is_served_behind_a_token(sqlite_fleet) -> None:
    assert sqlite_fleet.http.get("/openapi.json").status_code == 401
    r = sqlite_fleet.call("GET", "/openapi.json", sqlite_fleet.token("viewer"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and "/v1/bundles/{ref}/download" in doc["paths"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


@pytest.mark.slow
def test_no_operation_errors_or_breaks_its_schema(fleet) -> None:
    # given a fleet with a device (device routes get its token, the rest an admin token)
    device_token = fleet.enroll()["api_token"]
    enroll_token = fleet.call("POST", "/v1/enrollment-tokens", json={"expires_in_s": 600}).json()["token"]
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", fleet.http.app, headers=admin)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 17

    def headers_for(path: str) -> dict[str, str]:
        if path.startswith("/v1/device/"):
            return {"Authorization": f"Bearer {device_token}"}
        if path == "/v1/enroll":
            return {"Authorization": f"Bearer {enroll_token}"}
        return admin

    # when every operation gets a few generated requests, then every response passes the checks
    for operation in operations:
        headers = headers_for(operation.path)

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)  # noqa: B023 - run() is called right here

        run()
