"""Per-account backoff after failed logins, against password guessing spread over many IPs.

The per-IP limit (`service.http.ratelimit`) caps what one address may try; this caps what an
account may suffer. Every login attempt for an email counts as a failure until it succeeds:
`check` counts it atomically *before* the password is verified, so a burst of concurrent
guesses cannot all get in before the first failure is recorded, and `reset` clears the count
after a successful login. From the 5th failure in a row (the count expires 15 minutes after the
last failure) the account is locked for 2^(n-5) seconds after the n-th failure: 1 s, 2 s, 4 s,
..., at most 15 minutes. Attempts while locked are refused with `TooManyRequests` and not
counted. Unknown emails are counted and locked alike, so the answers never tell whether an
account exists.

Keys are `rl:login:<hash>:n` and `rl:login:<hash>:lock`, with a hash of the lower-cased email:
no email is stored in Redis. If Redis is unreachable or slow, the guard fails open (a warning
is logged) and the per-IP limit, which has its own in-memory fallback, still caps guessing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.domain.errors import TooManyRequests

logger = logging.getLogger("conduit.login_guard")

THRESHOLD = 5
WINDOW_SECONDS = 15 * 60
MAX_LOCK_SECONDS = 15 * 60
TIMEOUT_SECONDS = 0.25
WARN_EVERY_SECONDS = 10.0

# KEYS: failure count, lock. ARGV: threshold, window ms, longest lock ms.
# Returns the lock's remaining ms (the attempt is refused), or 0 (admitted and counted).
_CHECK_SCRIPT = """
local locked = redis.call('PTTL', KEYS[2])
if locked > 0 then return locked end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local threshold = tonumber(ARGV[1])
if n >= threshold then
  local delay = math.min(2 ^ (n - threshold) * 1000, tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], '1', 'PX', math.floor(delay))
end
return 0
"""

_last_warning = -math.inf


def keys(email: str) -> tuple[str, str]:
    """The failure-count and lock keys of `email` (compared lower-cased)."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"rl:login:{digest}:n", f"rl:login:{digest}:lock"


def _unavailable(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY_SECONDS:
        _last_warning = now
        logger.warning("login guard: redis unavailable (%s); not enforced", type(exc).__name__)


async def check(*, redis: Redis, email: str) -> None:
    """Admit and count a login attempt for `email`, or raise `TooManyRequests` while locked."""
    script = redis.register_script(_CHECK_SCRIPT)
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            locked_ms = int(
                await script(
                    keys=list(keys(email)),
                    args=[THRESHOLD, WINDOW_SECONDS * 1000, MAX_LOCK_SECONDS * 1000],
                )
            )
    except (RedisError, OSError, TimeoutError) as exc:
        _unavailable(exc)
        return
    if locked_ms > 0:
        retry_after = max(1, math.ceil(locked_ms / 1000))
        raise TooManyRequests(
            f"too many failed logins for this account, retry in {retry_after} seconds",
            retry_after=retry_after,
        )


async def reset(*, redis: Redis, email: str) -> None:
    """Forget the failures of `email` (after a successful login)."""
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await redis.delete(*keys(email))
    except (RedisError, OSError, TimeoutError) as exc:
        _unavailable(exc)
