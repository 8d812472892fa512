"""Liveness and readiness probes."""

from __future__ import annotations

import httpx


async def test_healthz_answers_without_io(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_both_dependencies(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


async def test_probes_answer_json_with_a_request_id(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await client.get(path)
        assert response.headers["content-type"] == "application/json"
        assert len(response.headers["x-request-id"]) == 32


async def test_probes_are_get_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/readyz")
    assert response.status_code == 405
    assert response.json() == {"errors": {"body": ["method not allowed"]}}
    head = await client.head("/healthz")
    assert head.status_code == 200
    assert head.content == b""
