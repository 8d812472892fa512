"""Tags in use."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.spec import operation
from service.api.v1 import cached
from service.schemas.article import TAGS_RESPONSE_EXAMPLE, TagsResponse

bp = Blueprint("tags", __name__)


@bp.get("/tags")
@operation(
    responses={200: TagsResponse},
    tags=["Tags"],
    examples={200: TAGS_RESPONSE_EXAMPLE},
)
async def get_tags() -> Response:
    """List the tags used by at least one article."""
    return jsonify(await cached.tags())
