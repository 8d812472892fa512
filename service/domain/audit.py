"""What the audit-log services return: entries as listed (rendered by schemas)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AuditRecord:
    """An entry as listed: the actor's current username (None: the CLI, or a deleted user)."""

    id: int
    actor: str | None
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]
    created_at: datetime
