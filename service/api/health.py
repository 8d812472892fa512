"""Liveness and readiness probes, and the route label of the metrics."""

from __future__ import annotations

import asyncio
import logging

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import text

from service.api.errors import error_response
from service.infra.db import db, describe_error
from service.infra.metrics import note_route as note_route_template
from service.infra.redis import redis

logger = logging.getLogger("conduit.health")

bp = Blueprint("health", __name__)

CHECK_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz() -> Response:
    """Process is alive (no I/O)."""
    return jsonify({"status": "ok"})


async def _check_database() -> None:
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis() -> None:
    await redis.client.ping()


# What an instance cannot answer without. Redis is not among them: without it requests fall
# back to PostgreSQL and to per-process limits (measured with 0 failed requests), and as every
# instance shares it, failing readiness on it would take the whole fleet out of the balancer.
REQUIRED = frozenset({"database"})


@bp.get("/readyz")
async def readyz() -> Response:
    """Ready while the database answers: 503 naming it otherwise; 200 "degraded" naming
    Redis when only Redis does not."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    results = await asyncio.gather(
        *(asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS) for check in checks.values()),
        return_exceptions=True,
    )
    failed = {
        name: result
        for name, result in zip(checks, results, strict=True)
        if isinstance(result, BaseException)
    }
    # Driver messages name internal hosts: they go to the log, not to the client.
    for name, error in failed.items():
        logger.warning("readiness: %s unreachable: %s", name, describe_error(error))
    statuses = {
        name: f"unreachable ({type(failed[name]).__name__})" if name in failed else "ok"
        for name in checks
    }
    if REQUIRED & failed.keys():
        errors = {name: [statuses[name]] for name in failed}
        return error_response(503, errors, {"Retry-After": "1"})
    return jsonify({"status": "degraded" if failed else "ready", "checks": statuses})


def note_route() -> None:
    """Hand the matched route template to the metrics middleware (`before_request` hook)."""
    rule = request.url_rule
    if rule is not None:
        note_route_template(rule.rule)
