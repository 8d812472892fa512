"""Version 1 of the API, served at `/api/v1`: one blueprint per resource."""

from __future__ import annotations

from flask import Blueprint

from service.api.v1 import (
    admin,
    articles,
    clients,
    comments,
    oauth,
    password_reset,
    profiles,
    tags,
    users,
    webhooks,
)

bp = Blueprint("v1", __name__, url_prefix="/api/v1")
for module in (
    users,
    password_reset,
    oauth,
    clients,
    profiles,
    articles,
    comments,
    tags,
    admin,
    webhooks,
):
    bp.register_blueprint(module.bp)
