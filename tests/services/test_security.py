"""Access tokens: verification, and the memo of tokens verified lately."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.domain.errors import NotAuthenticated
from service.services.security import PasswordPolicy, Passwords, Tokens

SECRET = "a-test-secret-that-is-long-enough-for-hs256-xxxxxxxx"


def test_a_memoized_token_is_refused_once_it_expires() -> None:
    tokens = Tokens(SECRET, timedelta(seconds=1))
    # Issued so that it expires at the next whole second (JWT times are whole seconds).
    now = datetime.now(UTC).replace(microsecond=0)
    token = tokens.issue(user_id=1, session_id=uuid.uuid4(), scopes={"profile:read"}, now=now)
    assert tokens.verify(token).user_id == 1
    assert tokens.verify(token).user_id == 1  # from the memo

    time.sleep(max(0.0, (now + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()) + 0.05)

    with pytest.raises(NotAuthenticated, match="token has expired"):
        tokens.verify(token)
    with pytest.raises(NotAuthenticated, match="token has expired"):
        tokens.verify(token)  # no longer memoized: decoded again, still expired


def test_the_memo_holds_only_valid_tokens_and_stays_bounded() -> None:
    tokens = Tokens(SECRET, timedelta(minutes=5))
    other = Tokens("another-secret-that-is-long-enough-for-hs256-yyyyyy", timedelta(minutes=5))
    forged = other.issue(user_id=2, session_id=uuid.uuid4(), scopes=set())
    for _ in range(2):
        with pytest.raises(NotAuthenticated, match="token is invalid"):
            tokens.verify(forged)
    issued = [
        tokens.issue(user_id=n, session_id=uuid.uuid4(), scopes=set())
        for n in range(Tokens.MEMO_SIZE + 10)
    ]
    assert [tokens.verify(token).user_id for token in issued] == list(range(len(issued)))
    assert len(tokens._verified) == Tokens.MEMO_SIZE
    assert forged not in tokens._verified


async def test_password_usage_counts_hashes_running_and_waiting() -> None:
    passwords = Passwords(PasswordPolicy(time_cost=3, max_concurrent=1))
    assert passwords.usage() == (0, 0)
    hashes = [asyncio.create_task(passwords.hash(f"password {i}")) for i in range(3)]
    await asyncio.sleep(0.01)  # all started: one holds the slot, two wait
    assert passwords.usage() == (1, 2)
    await asyncio.gather(*hashes)
    assert passwords.usage() == (0, 0)
