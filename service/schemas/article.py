"""Articles, tags and their request/response bodies."""

from __future__ import annotations

from pydantic import Field

from service.schemas.common import OutModel


class TagsResponse(OutModel):
    """`{"tags": [...]}`."""

    tags: list[str] = Field(examples=[["dragons", "training"]])
