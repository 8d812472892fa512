"""The API index: where the documentation, the collections and the auth endpoints are."""

from __future__ import annotations

from pydantic import Field

from service.schemas.common import OutModel


class IndexLink(OutModel):
    """One link of the index."""

    href: str = Field(
        description=(
            "Absolute path on this server; with `templated`, an RFC 6570 URI template "
            "(`{username}`)"
        ),
        examples=["/api/v1/articles"],
    )
    title: str = Field(examples=["Articles, newest first"])
    methods: list[str] = Field(
        description="The HTTP methods the resource answers", examples=[["GET", "POST"]]
    )
    templated: bool = Field(description="`href` has variables to fill in")


class IndexLinks(OutModel):
    """Every link of the index, by name (the names are stable)."""

    docs: IndexLink
    redoc: IndexLink
    openapi: IndexLink
    # `register` would shadow BaseModel's (ABC) method of that name.
    register_: IndexLink = Field(alias="register")
    login: IndexLink
    token: IndexLink
    user: IndexLink
    profile: IndexLink
    articles: IndexLink
    feed: IndexLink
    tags: IndexLink


class IndexResponse(OutModel):
    """`{"name": ..., "version": ..., "links": {...}}`."""

    name: str = Field(examples=["Conduit API"])
    version: str = Field(description="The service's version", examples=["0.1.0"])
    links: IndexLinks
