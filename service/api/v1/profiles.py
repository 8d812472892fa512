"""Profiles endpoints."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("profiles", __name__)
