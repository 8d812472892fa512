"""The OpenAPI document is valid and complete; the docs pages are self-hosted."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from openapi_spec_validator import validate

import service
from service.api.spec import TAG_ORDER, order_tags

METHODS = {"get", "put", "post", "delete", "patch"}
ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""")
SWAGGER_URL = re.compile(r"""\burl:\s*["']([^"']+)["']""")
ROOT = Path(__file__).resolve().parents[2]
INDEX_PATHS = {"/", "/api/v1"}


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


async def test_openapi_document_is_valid(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_every_operation_is_documented(document: dict[str, Any]) -> None:
    ops = operations(document)
    assert ("/api/v1/tags", "get") in {(path, method) for path, method, _ in ops}
    for path, method, operation in ops:
        where = f"{method.upper()} {path}"
        # The API index is the one operation outside /api/v1/ (tests/api/test_index.py).
        assert path.startswith("/api/v1/") or path in INDEX_PATHS, where
        assert operation.get("summary"), where
        assert operation.get("tags"), where
        assert operation.get("responses"), where
        assert "security" in operation, where
        assert "503" in operation["responses"], where
        for code, response in operation["responses"].items():
            if code.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                # The OAuth endpoints' own errors are RFC 6749 §5.2 bodies: the one exception.
                oauth = path.startswith("/api/v1/oauth/") and code in {"400", "401"}
                expected = "OAuthErrorOut" if oauth else "ErrorBody"
                assert schema == {"$ref": f"#/components/schemas/{expected}"}, (where, code)
    ids = [operation["operationId"] for _, _, operation in ops]
    assert len(ids) == len(set(ids))


async def test_token_security_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["Token"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "Authorization"}


async def _assert_self_hosted(client: httpx.AsyncClient, page: str) -> list[str]:
    """Fetch `page`, check every asset it names is relative and served; return their URLs."""
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assets = ASSET.findall(response.text)
    assert assets, response.text
    urls = []
    for asset in assets:
        assert not re.match(r"^(?:[a-z]+:)?//", asset), f"{page} loads {asset} from elsewhere"
        url = urljoin(f"http://testserver{page}", asset)
        assert url.startswith("http://testserver/api/v1/"), url
        served = await client.get(url)
        assert served.status_code == 200, url
        assert served.content, url
        urls.append(url)
    return urls


async def test_swagger_ui_is_self_hosted(client: httpx.AsyncClient) -> None:
    urls = await _assert_self_hosted(client, "/api/v1/docs")
    init = next(url for url in urls if url.endswith("swagger-init.js"))
    script = (await client.get(init)).text
    [spec_url] = SWAGGER_URL.findall(script)
    # Relative to the page (/api/v1/docs), like the assets.
    assert urljoin("http://testserver/api/v1/docs", spec_url) == (
        "http://testserver/api/v1/openapi.json"
    )
    assert any(url.endswith(".css") for url in urls)


async def test_redoc_is_self_hosted(client: httpx.AsyncClient) -> None:
    urls = await _assert_self_hosted(client, "/api/v1/redoc")
    assert "http://testserver/api/v1/openapi.json" in urls
    assert any(url.endswith("redoc.standalone.js") for url in urls)


async def test_asset_paths_cannot_escape_the_bundle(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/docs/assets/..%2F..%2F..%2Fpyproject.toml")
    assert response.status_code == 404
    assert response.json() == {"errors": {"body": ["not found"]}}


async def test_tags_are_listed_in_reading_order(document: dict[str, Any]) -> None:
    names = [tag["name"] for tag in document["tags"]]
    # Register and log in come first: what a newcomer needs before anything else.
    assert names[0] == "User and Authentication"
    used = {tag for _, _, operation in operations(document) for tag in operation["tags"]}
    assert set(names) == used
    known = [name for name in names if name in TAG_ORDER]
    assert known == [name for name in TAG_ORDER if name in used]
    # Tags nobody placed yet come after the placed ones.
    assert names[: len(known)] == known
    assert known[:6] == [
        "User and Authentication",
        "Profile",
        "Articles",
        "Comments",
        "Favorites",
        "Tags",
    ]


def test_unplaced_tags_come_last_by_name() -> None:
    tags = [{"name": "Zeta"}, {"name": "Admin"}, {"name": "Alpha"}, {"name": "Articles"}]
    assert [tag["name"] for tag in order_tags(tags)] == ["Articles", "Admin", "Alpha", "Zeta"]


async def test_info_version_is_the_package_version(document: dict[str, Any]) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert document["info"]["version"] == version("conduit") == service.__version__ == declared


def test_version_of_a_source_tree_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(service, "version", not_installed)
    assert service._installed_version() == "0+unknown"
