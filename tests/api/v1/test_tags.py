"""GET /api/v1/tags."""

from __future__ import annotations

import httpx


async def test_tags_empty_without_articles(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tags")
    assert response.status_code == 200
    assert response.json() == {"tags": []}
