"""What the schema-driven fuzzer (tests/api/test_fuzz.py) found, each pinned by a focused test."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import ApiEnv
from wiremesh.relay.introspect import IntrospectRequest


@pytest.mark.parametrize("body", [
    {"name": "k", "usage_limit": False},
    {"name": "k", "reusable": "true"},
    {"name": "k", "expires_in_s": "60"},
])
async def test_request_bodies_take_json_types_as_the_schema_says(api: ApiEnv, body) -> None:
    r = await api.client.post("/api/v1/setup-keys", json=body, headers=api.admin)
    assert r.status_code == 422, r.text
    field = next(k for k in body if k != "name")
    assert r.json()["errors"][0]["field"] == field


@pytest.mark.parametrize("body", [{"token": "t", "wait": False}, {"token": "t", "since": "1"}])
def test_relay_introspection_takes_json_types_as_the_schema_says(body) -> None:
    with pytest.raises(ValidationError):
        IntrospectRequest.model_validate(body)


async def test_405_names_every_method_the_path_takes(api: ApiEnv) -> None:
    r = await api.client.request("OPTIONS", "/api/v1/peers/a", headers=api.admin)
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}


async def test_error_answers_are_documented_as_problem_bodies(api: ApiEnv) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    responses = doc["paths"]["/api/v1/peers/{ref}"]["get"]["responses"]
    for code in ("401", "404", "422"):
        schema = responses[code]["content"]["application/problem+json"]["schema"]
        assert schema["required"] == ["title", "status", "detail"]
    r = await api.client.get("/api/v1/peers/nobody", headers=api.admin)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert isinstance(r.json()["detail"], str)
