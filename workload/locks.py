"""A Redis lock done right: ``SET key token NX PX ttl`` and a compare-and-delete release.

The random token makes the release safe: if our lock expired and another worker took it, the
Lua script sees a different token and deletes nothing (a plain DEL would free their lock).
"""

from __future__ import annotations

import secrets

import redis

# Runs atomically inside Redis: delete the key only if it still holds our token.
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLock:
    """One attempt to hold ``key`` for at most ``ttl_ms`` milliseconds."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(16)
        self._release = client.register_script(RELEASE_SCRIPT)

    def acquire(self) -> bool:
        """True if we now hold the lock; never waits (callers retry with backoff)."""
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> bool:
        """True if our lock was still held and is now released."""
        return bool(self._release(keys=[self.key], args=[self.token]))
