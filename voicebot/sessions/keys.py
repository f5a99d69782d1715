"""The Redis key scheme of call sessions, in one place.

One call's session is one Redis hash::

    <prefix>:<env>:call:{<call_id>}:session        e.g. voicebot:prod:call:{4f1c…}:session

* ``<prefix>`` is ``voicebot`` unless configured; ``<env>`` separates deployments (``prod``,
  ``staging``, a test's own name) that share one Redis.
* The braces around the call id are literal: they are a Redis Cluster *hash tag*, so every key of
  one call (this one and any added later, e.g. ``…:call:{<call_id>}:events``) lands in the same slot
  and a Lua script or MULTI may touch several of them on a cluster.
* Fields of the hash: ``version`` (integer, bumped by every write), ``data`` (the
  :class:`~voicebot.sessions.model.CallSession` as JSON) and ``token`` (the id of the write that
  set ``version``, which makes a retried write idempotent).
* The key expires ``ttl_secs`` after the last write (every write refreshes it).
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "voicebot"
"""First part of every key."""

MAX_CALL_ID_LENGTH = 256

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FORBIDDEN_IN_CALL_ID = re.compile(r"[{}\s\x00-\x1f\x7f]")


def check_call_id(call_id: str) -> str:
    """Return ``call_id`` if it can be part of a key; raise ``ValueError`` naming the problem.

    ACS call connection ids and browser session ids (GUIDs, URL-safe tokens) all pass; braces
    (they would break the hash tag), whitespace and control characters do not.
    """
    if not isinstance(call_id, str) or not call_id:
        raise ValueError(f"call id must be a non-empty string (got {call_id!r})")
    if len(call_id) > MAX_CALL_ID_LENGTH:
        raise ValueError(f"call id is longer than {MAX_CALL_ID_LENGTH} characters")
    if _FORBIDDEN_IN_CALL_ID.search(call_id):
        raise ValueError(
            f"call id {call_id!r} contains a brace, whitespace or a control character; "
            "use the ACS call connection id or a URL-safe session id"
        )
    return call_id


def check_name(what: str, value: str) -> str:
    """Return ``value`` if it is a valid key prefix or env name (letters, digits, ``_.-``)."""
    if not _NAME.match(value):
        raise ValueError(f"session {what} must be letters, digits, '_', '.' or '-' (got {value!r})")
    return value


def session_key(call_id: str, *, env: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The key of the session hash of ``call_id``: ``<prefix>:<env>:call:{<call_id>}:session``."""
    return f"{prefix}:{env}:call:{{{check_call_id(call_id)}}}:session"


def env_pattern(*, env: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A ``SCAN MATCH`` pattern for every call key of one env (for operators and tests)."""
    return f"{prefix}:{env}:call:*"
