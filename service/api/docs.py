"""The OpenAPI document and the self-hosted Swagger UI and ReDoc pages."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from openapi_ui_bundles import redoc, swagger_ui

from service.api.spec import spec

bp = Blueprint("docs", __name__, url_prefix="/api/v1")

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Conduit API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/swagger-init.js"></script></body></html>
"""

SWAGGER_INIT = """window.ui = SwaggerUIBundle({
  url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true,
  validatorUrl: null
});
"""

REDOC_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Conduit API</title></head>
<body><redoc spec-url="openapi.json"></redoc>
<script src="redoc/assets/redoc.standalone.js"></script></body></html>
"""


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document generated from the code."""
    return jsonify(spec.document_for(current_app))


@bp.get("/docs")
def swagger_page() -> Response:
    """Swagger UI."""
    return Response(SWAGGER_PAGE, mimetype="text/html")


@bp.get("/docs/assets/swagger-init.js")
def swagger_init() -> Response:
    """Swagger UI start-up script (a file, so a strict CSP needs no inline script)."""
    return Response(SWAGGER_INIT, mimetype="text/javascript")


@bp.get("/docs/assets/<path:filename>")
def swagger_assets(filename: str) -> Response:
    """Swagger UI's bundled files."""
    return send_from_directory(swagger_ui.static_path, filename, max_age=86_400)


@bp.get("/redoc")
def redoc_page() -> Response:
    """ReDoc."""
    return Response(REDOC_PAGE, mimetype="text/html")


@bp.get("/redoc/assets/<path:filename>")
def redoc_assets(filename: str) -> Response:
    """ReDoc's bundled file."""
    return send_from_directory(redoc.static_path, filename, max_age=86_400)
