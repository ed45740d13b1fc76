"""``GET /openapi.json``: every route of every shape documented, from the models the code uses."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from entrypoints.bootstrap import Parts, create_app
from eventfold.events.tenant import TenantCreated
from eventfold.openapi import OPERATIONS, build_document, served_routes, undocumented
from eventfold.settings import Settings
from producers.bodies import CreateRecordBody
from tests.integration.conftest import Api

SHAPES = {
    "run": Parts(),
    "serve api": Parts(api=True, ingest=False, processors=()),
    "serve ingest": Parts(api=False, ingest=True, processors=()),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_route_of_every_shape_has_an_entry(settings: Settings, shape: str) -> None:
    app = create_app(settings, SHAPES[shape])
    assert undocumented(app) == []
    doc = build_document(app)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == set(served_routes(app))


def test_a_route_without_an_entry_is_reported(settings: Settings) -> None:
    app = create_app(settings, Parts(api=True, ingest=False, processors=()))

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/tenants/{tenant}/undocumented", handler)
    assert undocumented(app) == [("GET", "/v1/tenants/{tenant}/undocumented")]


def test_shapes_document_only_what_they_serve(settings: Settings) -> None:
    api_doc = build_document(create_app(settings, SHAPES["serve api"]))
    ingest_doc = build_document(create_app(settings, SHAPES["serve ingest"]))
    assert "post" not in api_doc["paths"]["/v1/tenants"]  # the ingest gateway's
    assert "get" not in ingest_doc["paths"]["/v1/tenants"]  # the read API's
    assert "get" not in ingest_doc["paths"].get("/v1/tenants/{tenant}", {})
    assert "post" in ingest_doc["paths"]["/v1/tenants/{tenant}/events"]


async def test_served_document_is_openapi_31_with_bodies_errors_and_security(api: Api) -> None:
    resp = await api.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    assert doc["openapi"] == "3.1.0"
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    schemas = doc["components"]["schemas"]
    # Request bodies are the models the handlers validate with.
    assert (
        schemas["TenantCreated"]["properties"]
        == TenantCreated.model_json_schema(ref_template="#/components/schemas/{model}")[
            "properties"
        ]
    )
    assert schemas["CreateRecordBody"]["additionalProperties"] is False
    assert set(schemas["CreateRecordBody"]["properties"]) == set(CreateRecordBody.model_fields)
    paths = doc["paths"]
    post_tenant = paths["/v1/tenants"]["post"]
    assert post_tenant["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TenantCreated"
    }
    assert {"202", "401", "403", "409", "422"} <= set(post_tenant["responses"])
    problem = post_tenant["responses"]["422"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/ProblemOut"}
    assert "WWW-Authenticate" in post_tenant["responses"]["401"]["headers"]
    patch = paths["/v1/tenants/{tenant}/collections/{collection}/records/{id}"]["patch"]
    assert "application/merge-patch+json" in patch["requestBody"]["content"]
    assert {"412", "413", "415"} <= set(patch["responses"])
    listing = paths["/v1/tenants/{tenant}/collections/{collection}/records"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["filter"]["style"] == "deepObject"
    assert params["order"]["schema"]["enum"] == ["id", "-id", "updated_at", "-updated_at"]
    assert params["limit"]["schema"]["maximum"] == 1000
    assert paths["/health/ready"]["get"]["security"] == []
    assert listing["security"] == [{"bearer": []}, {"apiKey": []}]
    # Every documented operation is one of the registry's, and ids are unique.
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in paths.items():
        for method in ops:
            assert (method.upper(), path) in OPERATIONS


async def test_document_loads_as_a_valid_openapi_schema(api: Api) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    doc = await (await api.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in doc["paths"].values())
