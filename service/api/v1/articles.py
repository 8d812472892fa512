"""Articles endpoints."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("articles", __name__)
