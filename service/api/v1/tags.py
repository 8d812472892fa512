"""Tags in use."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.spec import operation
from service.db import db
from service.schemas.article import TagsResponse
from service.services import tags as tags_service

bp = Blueprint("tags", __name__)


@bp.get("/tags")
@operation(
    responses={200: TagsResponse},
    tags=["Tags"],
    examples={200: {"tags": ["dragons", "training"]}},
)
async def get_tags() -> Response:
    """List the tags used by at least one article."""
    names = await tags_service.list_tags(session=db.session)
    return jsonify(TagsResponse(tags=names).to_json())
