"""Server discovery and VoIP: `GET /.well-known/matrix/client` (outside /_matrix/client: HTTP
only) and `GET /voip/turnServer`.

Why a configurable base URL: behind a reverse proxy (TLS, another port or path) the address a
client must use is not the one the hub listens on; `public_base_url` names it. Unset, the
answer is the URL the request came in on, which is right whenever the client reached the hub
directly.

TURN credentials follow the TURN REST API (draft-uberti-behave-turn-rest, coturn's
`use-auth-secret`): username "<expiry unix seconds>:<user id>", password
base64(HMAC-SHA1(shared secret, username)); coturn checks them without asking the hub.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver


def base_url(configured: str, scheme: str, host: str | None, fallback: str) -> str:
    """The client base URL: the configured one, else scheme://Host of the request, else the
    listener's address. No trailing slash (clients append /_matrix/...)."""
    if configured:
        return configured.rstrip("/")
    if host and host.isprintable() and not any(c in host for c in "/\\@ ?#"):
        return f"{scheme}://{host}"
    return fallback


def well_known_client(hs: Homeserver, scheme: str, host: str | None, fallback: str) -> dict[str, Any]:
    return {"m.homeserver": {"base_url": base_url(hs.settings.public_base_url, scheme, host, fallback)}}


def turn_credentials(secret: str, user_id: str, uris: tuple[str, ...], lifetime_s: int, now_s: float) -> dict[str, Any]:
    """Time-limited TURN credentials (pure: the clock is an argument)."""
    username = f"{int(now_s) + lifetime_s}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return {"username": username, "password": base64.b64encode(digest).decode(), "uris": list(uris),
            "ttl": lifetime_s}


async def turn_server(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """{} when no TURN server is configured (Synapse's answer: clients then call without relay)."""
    requester = await hs.accounts.authenticate(req.access_token)
    settings = hs.settings
    if not settings.turn_uris or not settings.turn_shared_secret:
        return ok({})
    return ok(turn_credentials(settings.turn_shared_secret, requester.user_id, settings.turn_uris,
                               settings.turn_user_lifetime_s, time.time()))


async def thirdparty_protocols(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """The third-party networks bridged here: none yet, so `{}` (the spec's answer for none).
    Element asks at start (its call handler looks for PSTN protocols) and retries a 404."""
    await hs.accounts.authenticate(req.access_token)
    return ok({})
