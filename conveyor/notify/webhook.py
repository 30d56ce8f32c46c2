"""A generic webhook signed per the Standard Webhooks spec (https://www.standardwebhooks.com):
headers webhook-id, webhook-timestamp and webhook-signature `v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
keyed by the base64 part of a `whsec_…` secret. The receiver deduplicates on webhook-id, which is the
announcement's id: a retried delivery carries the same one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from conveyor.notify.base import Refused, Unavailable, post, retry_after

SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise Refused("the webhook secret is not a Standard Webhooks secret (whsec_ followed by base64)") from None


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def send(url: str, secret: str, message_id: str, body: bytes) -> None:
    """Deliver once. 410 Gone stops the destination; any other non-2xx is retried."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(signing_key(secret), message_id, timestamp, body),
    }
    answer = post(url, what="webhook", body=body, headers=headers)
    if 200 <= answer.status < 300:
        return
    if answer.status == 410:
        raise Refused("webhook answered 410 Gone: the receiver says this endpoint no longer exists")
    if answer.status == 429:
        raise Unavailable("webhook rate limited (429)", retry_after=retry_after(answer))
    raise Unavailable(f"webhook answered HTTP {answer.status}")
