"""Sessions in Redis (or a Redis Cluster), shared by every worker: resume works on any of them.

Key scheme (see :mod:`voicebot.sessions.keys`): one hash per call,
``<prefix>:<env>:call:{<call_id>}:session`` with fields ``version``, ``data`` (the session JSON)
and ``token``; its TTL is reset by every write. The braces are a cluster hash tag: all keys of one
call share a slot.

A write is one Lua script: compare the stored ``version`` with the expected one, then set the
fields and the TTL, atomically (on a single server and on a cluster alike). A write retried after
a dropped reply finds its own ``token`` and reports success instead of a conflict, so a retry never
applies a change twice.

Every command has a timeout (``op_timeout_secs``); connection failures and timeouts raise
:class:`~voicebot.sessions.store.SessionStoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from voicebot.sessions.keys import DEFAULT_PREFIX, check_name, session_key
from voicebot.sessions.model import CallSession, utc_now
from voicebot.sessions.store import (
    DEFAULT_TTL_SECS,
    SessionConflict,
    SessionStore,
    SessionStoreUnavailable,
    StoreHealth,
    decode_session,
    encode_session,
)

OP_TIMEOUT_SECS = 1.0
"""Default bound of one store operation (connect, command, reply), in seconds."""

# KEYS[1]: the session hash. ARGV: expected version, session JSON, TTL in ms, write token.
# Returns {1, new version} when stored (or already stored by this very write), {0, stored version}
# on a conflict.
_SAVE_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local expected = tonumber(ARGV[1])
if current ~= expected then
  if current == expected + 1 and redis.call('HGET', KEYS[1], 'token') == ARGV[4] then
    return {1, current}
  end
  return {0, current}
end
redis.call('HSET', KEYS[1], 'version', tostring(current + 1), 'data', ARGV[2], 'token', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, current + 1}
"""

_T = TypeVar("_T")

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_TRUE = {"1", "true", "yes", "on"}


def split_cluster_url(url: str) -> tuple[str, bool]:
    """``url`` as redis-py takes it, and whether it names a Redis Cluster.

    A cluster is named by the scheme (``redis+cluster://``, ``rediss+cluster://``) or by the query
    parameter ``cluster=true``; both are removed from the returned URL.
    """
    parts = urlsplit(url)
    cluster = False
    scheme = parts.scheme
    if scheme in _CLUSTER_SCHEMES:
        scheme = _CLUSTER_SCHEMES[scheme]
        cluster = True
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "cluster":
            cluster = cluster or value.lower() in _TRUE
        else:
            query.append((name, value))
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query))), cluster


class RedisSessionStore(SessionStore):
    """A :class:`SessionStore` in Redis, for any number of workers.

    Build it with :meth:`from_url`, or pass a ``redis.asyncio`` ``Redis``/``RedisCluster`` client
    (created with ``decode_responses=False``). The store closes a client it created; one passed in
    is closed too unless ``owns_client=False``.
    """

    backend: ClassVar[str] = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        env: str = "dev",
        prefix: str = DEFAULT_PREFIX,
        ttl_secs: float = DEFAULT_TTL_SECS,
        op_timeout_secs: float = OP_TIMEOUT_SECS,
        owns_client: bool = True,
    ) -> None:
        problems = []
        for what, value in (("env", env), ("prefix", prefix)):
            try:
                check_name(what, value)
            except ValueError as exc:
                problems.append(str(exc))
        if ttl_secs < 0.001:
            problems.append(f"session ttl_secs must be at least 0.001 (got {ttl_secs!r})")
        if op_timeout_secs <= 0:
            problems.append(f"session op_timeout_secs must be positive (got {op_timeout_secs!r})")
        if problems:
            raise ValueError("; ".join(problems))
        self.env = env
        self.prefix = prefix
        self.ttl_secs = ttl_secs
        self.op_timeout_secs = op_timeout_secs
        self._client = client
        self._owns_client = owns_client
        self._save = client.register_script(_SAVE_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        env: str = "dev",
        prefix: str = DEFAULT_PREFIX,
        ttl_secs: float = DEFAULT_TTL_SECS,
        op_timeout_secs: float = OP_TIMEOUT_SECS,
    ) -> RedisSessionStore:
        """A store on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        ``cluster=True`` (or a cluster URL, see :func:`split_cluster_url`) connects with
        ``RedisCluster``; ``cluster=False`` never does. Nothing connects until the first command,
        so a store can be made while Redis is down.
        """
        plain_url, url_says_cluster = split_cluster_url(url)
        options: dict[str, Any] = {
            "socket_timeout": op_timeout_secs,
            "socket_connect_timeout": op_timeout_secs,
            # One quick retry: a pooled connection may have died with a Redis restart.
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
        }
        use_cluster = url_says_cluster if cluster is None else cluster
        client: Redis | RedisCluster
        if use_cluster:
            client = RedisCluster.from_url(plain_url, **options)
        else:
            client = Redis.from_url(plain_url, **options)
        return cls(
            client, env=env, prefix=prefix, ttl_secs=ttl_secs, op_timeout_secs=op_timeout_secs
        )

    @property
    def is_cluster(self) -> bool:
        return isinstance(self._client, RedisCluster)

    def key(self, call_id: str) -> str:
        """The Redis key of the session of ``call_id``."""
        return session_key(call_id, env=self.env, prefix=self.prefix)

    async def load(self, call_id: str) -> CallSession | None:
        key = self.key(call_id)
        version, data = await self._run("load", call_id, self._client.hmget(key, "version", "data"))
        if version is None or data is None:
            return None
        return decode_session(call_id, data, version=int(version))

    async def save(self, session: CallSession, expected_version: int | None = None) -> CallSession:
        expected = session.version if expected_version is None else expected_version
        key = self.key(session.call_id)
        now = utc_now()
        data = encode_session(session, version=expected + 1, updated_at=now)
        token = uuid.uuid4().hex
        ttl_ms = max(1, round(self.ttl_secs * 1000))
        stored, version = await self._run(
            "save", session.call_id, self._save(keys=[key], args=[expected, data, ttl_ms, token])
        )
        if not stored:
            raise SessionConflict(session.call_id, expected, int(version))
        session.version = int(version)
        session.updated_at = now
        return session

    async def delete(self, call_id: str) -> bool:
        key = self.key(call_id)
        removed = await self._run("delete", call_id, self._client.delete(key))
        return bool(removed)

    async def ttl(self, call_id: str) -> float | None:
        key = self.key(call_id)
        millis = await self._run("ttl", call_id, self._client.pttl(key))
        if millis == -2:
            return None
        if millis == -1:
            return float("inf")
        return float(millis) / 1000

    async def health(self) -> StoreHealth:
        started = time.perf_counter()
        try:
            await self._run("ping", None, self._client.ping())
        except SessionStoreUnavailable as exc:
            return StoreHealth(backend=self.backend, status="degraded", detail=str(exc))
        latency_ms = (time.perf_counter() - started) * 1000
        return StoreHealth(backend=self.backend, status="ok", latency_ms=round(latency_ms, 3))

    async def aclose(self) -> None:
        if self._owns_client:
            try:
                async with asyncio.timeout(self.op_timeout_secs):
                    await self._client.aclose()
            except (RedisError, RedisClusterException, OSError, TimeoutError):
                pass

    async def _run(self, op: str, call_id: str | None, command: Awaitable[_T]) -> _T:
        """Await one Redis command within the timeout; failures become SessionStoreUnavailable."""
        try:
            async with asyncio.timeout(self.op_timeout_secs):
                return await command
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            what = f"{op} of call {call_id}" if call_id else op
            raise SessionStoreUnavailable(
                f"redis session store: {what} failed: {type(exc).__name__}: {exc or 'timed out'}"
            ) from exc
