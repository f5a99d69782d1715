"""Signed media-stream URLs: ACS sends no auth header of ours, so the URL carries the proof.

A token is ``<expiry>.<signature>``: expiry in Unix seconds, signature the URL-safe base64 of
HMAC-SHA256(key, ``"<call_id>.<expiry>"``). It binds one call id until the expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from enum import StrEnum
from urllib.parse import urlencode


class TokenProblem(StrEnum):
    """Why a media token was refused (sent as the WebSocket close reason)."""

    MISSING = "missing token"
    MALFORMED = "malformed token"
    FORGED = "invalid token signature"
    EXPIRED = "token expired"


def _signature(key: bytes, call_id: str, expiry: int) -> str:
    digest = hmac.new(key, f"{call_id}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(key: bytes, call_id: str, ttl_secs: int, *, now: float | None = None) -> str:
    """A token for ``call_id`` valid for ``ttl_secs`` seconds."""
    expiry = int((time.time() if now is None else now) + ttl_secs)
    return f"{expiry}.{_signature(key, call_id, expiry)}"


def verify(
    key: bytes, call_id: str, token: str | None, *, now: float | None = None
) -> TokenProblem | None:
    """None if ``token`` is valid for ``call_id`` now, else why not."""
    if not token:
        return TokenProblem.MISSING
    expiry_text, _, signature = token.partition(".")
    if not expiry_text.isdigit() or not signature:
        return TokenProblem.MALFORMED
    expiry = int(expiry_text)
    if not hmac.compare_digest(signature, _signature(key, call_id, expiry)):
        return TokenProblem.FORGED
    if expiry < (time.time() if now is None else now):
        return TokenProblem.EXPIRED
    return None


def media_url(base: str, key: bytes, call_id: str, ttl_secs: int) -> str:
    """The signed media-stream WebSocket URL for ``call_id`` under ``base`` (http(s) or ws(s))."""
    ws_base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    query = urlencode({"call_id": call_id, "token": sign(key, call_id, ttl_secs)})
    return f"{ws_base}/api/v1/media/stream?{query}"
