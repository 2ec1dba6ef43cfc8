"""Matrix identifier grammar (user ids, room ids, aliases) and token generation. Pure."""
from __future__ import annotations

import re
import secrets
import string

_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
_SERVER_NAME_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?$")
_ALPHABET = string.ascii_letters + string.digits

# 16 characters of [A-Za-z0-9] carry ~95 bits: unguessable online, yet short enough that a whole
# seed-style CoAP URI stays under libcoap's ~100-byte limit.
TOKEN_LENGTH = 16


def random_string(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_access_token() -> str:
    return random_string(TOKEN_LENGTH)


def is_valid_localpart(localpart: str) -> bool:
    return bool(_LOCALPART_RE.match(localpart)) and len(localpart) <= 200


def is_valid_server_name(name: str) -> bool:
    return bool(_SERVER_NAME_RE.match(name)) and len(name) <= 255


def split_id(identifier: str, sigil: str) -> tuple[str, str]:
    """('@alice:hub', '@') -> ('alice', 'hub'); ValueError if it is not of that kind."""
    if not identifier.startswith(sigil) or ":" not in identifier:
        raise ValueError(f"not a {sigil} identifier: {identifier!r}")
    local, server = identifier[1:].split(":", 1)
    if not local or not is_valid_server_name(server):
        raise ValueError(f"bad identifier: {identifier!r}")
    return local, server


def is_valid_user_id(user_id: str) -> bool:
    try:
        split_id(user_id, "@")
    except ValueError:
        return False
    return len(user_id) <= 255


def user_id_for(localpart_or_id: str, server_name: str) -> str:
    """Accept a bare localpart or a full user id (as logins and MQTT usernames do)."""
    if localpart_or_id.startswith("@"):
        return localpart_or_id
    return f"@{localpart_or_id.lower()}:{server_name}"


def server_of(identifier: str) -> str:
    return identifier.split(":", 1)[1]
