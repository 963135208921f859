"""Schemathesis against the app's own OpenAPI schema: no 5xx, no schema violations."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from app.main import create_app
from tests.app.conftest import API_KEY, make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, small_weights: Path):  # type: ignore[no-untyped-def]
    return create_app(make_settings(tmp_path_factory.mktemp("schema"), small_weights))


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_openapi_fuzz_finds_no_server_errors(app, with_key: bool) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        client.get("/healthz")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        headers = {"Authorization": f"Bearer {API_KEY}"} if with_key else {}
        failures: list[str] = []
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy())
            def run(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call(headers=headers)
                for check in (not_a_server_error, status_code_conformance, response_schema_conformance):
                    try:
                        case.validate_response(response, checks=[check], headers=headers)
                    except Exception as e:  # schemathesis raises its own failure types
                        failures.append(f"{case.operation.label}: {str(e)[:300]}")
                        return

            run()
        assert not failures, "\n".join(failures[:10])
