"""CoAP short paths: expand abbreviated Uri-Path / Uri-Query options to full Matrix HTTP paths.

Two compatible shorthands are accepted (see ``docs/coap-short-paths.md``):

1. **Segment abbreviations**, e.g. the sensor seed's
   ``/_m/c/a/v1/r/ROOM_ID/s/m.room.message?a=TOKEN`` for
   ``/_matrix/client/api/v1/rooms/ROOM_ID/send/m.room.message?access_token=TOKEN``.
   Expansion is *position-aware*: a segment is only rewritten where the route grammar
   (:data:`ROUTES`) expects a route keyword.  Path parameters -- room ids, aliases, event types,
   transaction ids, user ids, state keys -- are data and are never rewritten, so an event type
   ``s`` or an alias ``#s:hub`` stays as sent.  Abbreviated and full segments mix freely.
2. **MSC3079 path enums** (version 1): a one-character first segment standing for a whole
   ``/_matrix/client/r0/...`` route, followed by that route's parameters left to right, e.g.
   ``/7`` = ``/_matrix/client/r0/sync`` and ``/9/{roomId}/{eventType}/{txnId}`` = send.

Segments are CoAP Uri-Path option values, i.e. already percent-decoded; they are kept as given.
The module is pure (no I/O).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ACCESS_TOKEN_OPTION",
    "MSC3079_PATHS",
    "QUERY_ABBREVIATIONS",
    "ROUTES",
    "SEGMENT_ABBREVIATIONS",
    "UnknownShortPath",
    "expand_path",
    "expand_query",
    "shorten_path",
    "shorten_query",
]

#: MSC3079: CoAP option number carrying the access token (same properties as Uri-Query); the
#: server remembers the last value per connection when a later request omits it.
ACCESS_TOKEN_OPTION = 256


class UnknownShortPath(ValueError):
    """The path cannot stand for any Matrix path (not under /_matrix, bad MSC3079 enum/arity)."""


#: One table of segment abbreviations -> full route keyword.  Applied ONLY at route-keyword
#: positions of :data:`ROUTES`; one abbreviation always means the same word.
SEGMENT_ABBREVIATIONS: dict[str, str] = {
    # prefix and API families
    "_m": "_matrix",
    "c": "client",
    "f": "federation",
    "k": "key",
    "md": "media",
    # client API versions
    "a": "api",  # /_matrix/client/api/v1 (the seed's legacy prefix)
    "un": "unstable",
    "vs": "versions",
    # client, top level
    "r": "rooms",
    "sy": "sync",
    "j": "join",
    "kn": "knock",
    "ac": "account",
    "w": "whoami",
    "pw": "password",
    "lg": "login",
    "lo": "logout",
    "rg": "register",
    "cap": "capabilities",
    "cr": "createRoom",
    "jr": "joined_rooms",
    "pb": "publicRooms",
    "dir": "directory",
    "u": "user",
    "ud": "user_directory",
    "se": "search",
    "fl": "filter",
    "ad": "account_data",
    "tg": "tags",
    "pr": "profile",
    "dn": "displayname",
    "av": "avatar_url",
    "p": "presence",
    "sta": "status",
    "sd": "sendToDevice",
    "dv": "devices",
    "dd": "delete_devices",
    "ks": "keys",
    "upl": "upload",
    "q": "query",
    "cl": "claim",
    "ch": "changes",
    "pu": "pushers",
    "pru": "pushrules",
    "n": "notifications",
    "vo": "voip",
    "ts": "turnServer",
    # client, per room (/rooms/{roomId}/...)
    "s": "send",
    "st": "state",
    "m": "messages",
    "e": "event",
    "i": "invite",
    "l": "leave",
    "fg": "forget",
    "ki": "kick",
    "b": "ban",
    "ub": "unban",
    "rd": "redact",
    "mb": "members",
    "jm": "joined_members",
    "ty": "typing",
    "rc": "receipt",
    "rm": "read_markers",
    "cx": "context",
    "rp": "report",
    "rl": "relations",
    "h": "hierarchy",
    "img": "org.matrix_gateway.image",  # a device's picture (device_media_handlers.py)
    # federation
    "sid": "state_ids",
    "bf": "backfill",
    "mj": "make_join",
    "sj": "send_join",
    "ml": "make_leave",
    "sl": "send_leave",
    "ver": "version",
    "gme": "get_missing_events",
    "ea": "event_auth",
    # key
    "sv": "server",
    # media
    "dl": "download",
    "th": "thumbnail",
    "cfg": "config",
    "pv": "preview_url",
}

#: Query key abbreviations (keys only; values are data and never rewritten).
QUERY_ABBREVIATIONS: dict[str, str] = {
    "a": "access_token",
    "s": "since",
    "t": "timeout",
    "l": "limit",
    "d": "dir",
    "f": "from",
    "fi": "filter",
    "fs": "full_state",
    "fn": "filename",
    "sp": "set_presence",
    "sn": "server_name",
}

_CLIENT_VERSIONS = ("r0", "v3", "v1", "unstable", "api/v1")

# Client-server routes below /_matrix/client/{version}/.  {name} = data (path parameter).
_CLIENT_ROUTES = """
sync
login
logout/all
register/available
capabilities
createRoom
joined_rooms
publicRooms
search
notifications
pushers/set
pushrules/{scope}/{kind}/{ruleId}/enabled
pushrules/{scope}/{kind}/{ruleId}/actions
account/whoami
account/password
account/deactivate
account/3pid
join/{roomIdOrAlias}
knock/{roomIdOrAlias}
user/{userId}/filter/{filterId}
user/{userId}/account_data/{type}
user/{userId}/rooms/{roomId}/tags/{tag}
user/{userId}/rooms/{roomId}/account_data/{type}
user_directory/search
profile/{userId}/displayname
profile/{userId}/avatar_url
presence/{userId}/status
sendToDevice/{eventType}/{txnId}
devices/{deviceId}
delete_devices
keys/upload
keys/query
keys/claim
keys/changes
directory/room/{roomAlias}
directory/list/room/{roomId}
voip/turnServer
rooms/{roomId}/send/{eventType}/{txnId}
rooms/{roomId}/state/{eventType}/{stateKey}
rooms/{roomId}/messages
rooms/{roomId}/event/{eventId}
rooms/{roomId}/context/{eventId}
rooms/{roomId}/join
rooms/{roomId}/invite
rooms/{roomId}/leave
rooms/{roomId}/forget
rooms/{roomId}/kick
rooms/{roomId}/ban
rooms/{roomId}/unban
rooms/{roomId}/redact/{eventId}/{txnId}
rooms/{roomId}/members
rooms/{roomId}/joined_members
rooms/{roomId}/typing/{userId}
rooms/{roomId}/receipt/{receiptType}/{eventId}
rooms/{roomId}/read_markers
rooms/{roomId}/report/{eventId}
rooms/{roomId}/relations/{eventId}/{relType}/{eventType}
rooms/{roomId}/aliases
rooms/{roomId}/hierarchy
rooms/{roomId}/org.matrix_gateway.image
"""

_OTHER_ROUTES = """
_matrix/client/versions
_matrix/federation/v1/version
_matrix/federation/v1/send/{txnId}
_matrix/federation/v1/event/{eventId}
_matrix/federation/v1/state/{roomId}
_matrix/federation/v1/state_ids/{roomId}
_matrix/federation/v1/backfill/{roomId}
_matrix/federation/v1/get_missing_events/{roomId}
_matrix/federation/v1/event_auth/{roomId}/{eventId}
_matrix/federation/v1/make_join/{roomId}/{userId}
_matrix/federation/v1/send_join/{roomId}/{eventId}
_matrix/federation/v1/make_leave/{roomId}/{userId}
_matrix/federation/v1/send_leave/{roomId}/{eventId}
_matrix/federation/v1/invite/{roomId}/{eventId}
_matrix/federation/v1/query/directory
_matrix/federation/v1/query/profile
_matrix/federation/v1/user/devices/{userId}
_matrix/federation/v1/user/keys/query
_matrix/federation/v1/user/keys/claim
_matrix/federation/v2/send_join/{roomId}/{eventId}
_matrix/federation/v2/send_leave/{roomId}/{eventId}
_matrix/federation/v2/invite/{roomId}/{eventId}
_matrix/key/v2/server/{keyId}
_matrix/key/v2/query/{serverName}/{keyId}
_matrix/media/{mv}/upload
_matrix/media/{mv}/config
_matrix/media/{mv}/preview_url
_matrix/media/{mv}/download/{serverName}/{mediaId}/{fileName}
_matrix/media/{mv}/thumbnail/{serverName}/{mediaId}
"""

#: Every route template the expander knows, as full paths.  A route's prefixes are routes too
#: (``rooms/{roomId}/state`` is covered by ``rooms/{roomId}/state/{eventType}/{stateKey}``).
ROUTES: tuple[str, ...] = tuple(
    [
        f"/_matrix/client/{v}/{r}"
        for v in _CLIENT_VERSIONS
        for r in _CLIENT_ROUTES.split()
    ]
    + [
        "/" + r.replace("{mv}", mv)
        for r in _OTHER_ROUTES.split()
        for mv in (("r0", "v3", "v1") if "{mv}" in r else ("",))
    ]
)

#: MSC3079 (version 1) CoAP path enums: code -> full path template.
MSC3079_PATHS: dict[str, str] = {
    "0": "/_matrix/client/versions",
    "1": "/_matrix/client/r0/login",
    "2": "/_matrix/client/r0/capabilities",
    "3": "/_matrix/client/r0/logout",
    "4": "/_matrix/client/r0/register",
    "5": "/_matrix/client/r0/user/{userId}/filter",
    "6": "/_matrix/client/r0/user/{userId}/filter/{filterId}",
    "7": "/_matrix/client/r0/sync",
    "8": "/_matrix/client/r0/rooms/{roomId}/state/{eventType}/{stateKey}",
    "9": "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}",
    "A": "/_matrix/client/r0/rooms/{roomId}/event/{eventId}",
    "B": "/_matrix/client/r0/rooms/{roomId}/state",
    "C": "/_matrix/client/r0/rooms/{roomId}/members",
    "D": "/_matrix/client/r0/rooms/{roomId}/joined_members",
    "E": "/_matrix/client/r0/rooms/{roomId}/messages",
    "F": "/_matrix/client/r0/rooms/{roomId}/redact/{eventId}/{txnId}",
    "G": "/_matrix/client/r0/createRoom",
    "H": "/_matrix/client/r0/directory/room/{roomAlias}",
    "I": "/_matrix/client/r0/joined_rooms",
    "J": "/_matrix/client/r0/rooms/{roomId}/invite",
    "K": "/_matrix/client/r0/rooms/{roomId}/join",
    "L": "/_matrix/client/r0/join/{roomIdOrAlias}",
    "M": "/_matrix/client/r0/rooms/{roomId}/leave",
    "N": "/_matrix/client/r0/rooms/{roomId}/forget",
    "O": "/_matrix/client/r0/rooms/{roomId}/kick",
    "P": "/_matrix/client/r0/rooms/{roomId}/ban",
    "Q": "/_matrix/client/r0/rooms/{roomId}/unban",
    "R": "/_matrix/client/r0/directory/list/room/{roomId}",
    "S": "/_matrix/client/r0/publicRooms",
    "T": "/_matrix/client/r0/user_directory/search",
    "U": "/_matrix/client/r0/profile/{userId}/displayname",
    "V": "/_matrix/client/r0/profile/{userId}/avatar_url",
    "W": "/_matrix/client/r0/profile/{userId}",
    "X": "/_matrix/client/r0/voip/turnServer",
    "Y": "/_matrix/client/r0/rooms/{roomId}/typing/{userId}",
    "Z": "/_matrix/client/r0/rooms/{roomId}/receipt/{receiptType}/{eventId}",
    "a": "/_matrix/client/r0/rooms/{roomId}/read_markers",
    "b": "/_matrix/client/r0/presence/{userId}/status",
    "c": "/_matrix/client/r0/sendToDevice/{eventType}/{txnId}",
    "d": "/_matrix/client/r0/devices",
    "e": "/_matrix/client/r0/devices/{deviceId}",
    "f": "/_matrix/client/r0/delete_devices",
    "g": "/_matrix/client/r0/keys/upload",
    "h": "/_matrix/client/r0/keys/query",
    "i": "/_matrix/client/r0/keys/claim",
    "j": "/_matrix/client/r0/keys/changes",
    "k": "/_matrix/client/r0/pushers",
    "l": "/_matrix/client/r0/pushers/set",
    "m": "/_matrix/client/r0/notifications",
    "n": "/_matrix/client/r0/pushrules/",
    "o": "/_matrix/client/r0/search",
    "p": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags",
    "q": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags/{tag}",
    "r": "/_matrix/client/r0/user/{userId}/account_data/{type}",
    "s": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/account_data/{type}",
    "t": "/_matrix/client/r0/rooms/{roomId}/context/{eventId}",
    "u": "/_matrix/client/r0/rooms/{roomId}/report/{eventId}",
}


# ---------------------------------------------------------------------------------------------
# Route grammar trie
# ---------------------------------------------------------------------------------------------


@dataclass
class _Node:
    literals: dict[str, "_Node"] = field(default_factory=dict)
    param: "_Node | None" = None


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _build_trie(routes: tuple[str, ...]) -> _Node:
    root = _Node()
    for route in routes:
        node = root
        for seg in route.strip("/").split("/"):
            if _is_param(seg):
                if node.literals:
                    raise AssertionError(f"route grammar: {route}: parameter beside keywords")
                node.param = node.param or _Node()
                node = node.param
            else:
                if node.param is not None:
                    raise AssertionError(f"route grammar: {route}: keyword beside a parameter")
                node = node.literals.setdefault(seg, _Node())
    return root


_ROOT = _build_trie(ROUTES)
_REVERSE_ABBREVIATIONS = {full: short for short, full in SEGMENT_ABBREVIATIONS.items()}
_REVERSE_QUERY = {full: short for short, full in QUERY_ABBREVIATIONS.items()}


def _template_segments(template: str) -> list[str]:
    return template[1:].split("/")


def _msc3079_arity(template: str) -> int:
    return sum(1 for s in _template_segments(template) if _is_param(s))


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def expand_path(segments: list[str]) -> list[str]:
    """Expand CoAP Uri-Path segments to the full segments of a ``/_matrix/...`` path.

    ``["_m", "c", "a", "v1", "r", "!room:hub", "s", "m.room.message"]`` ->
    ``["_matrix", "client", "api", "v1", "rooms", "!room:hub", "send", "m.room.message"]``;
    ``["7"]`` -> ``["_matrix", "client", "r0", "sync"]`` (MSC3079).

    Segments at route-keyword positions are expanded via :data:`SEGMENT_ABBREVIATIONS`;
    parameters and anything past the known grammar (unknown or unstable endpoints) are copied
    unchanged, so the HTTP router answers those as it would over HTTP.

    Raises UnknownShortPath for an empty path, a first segment that is neither ``_matrix``/``_m``
    nor an MSC3079 enum, or an MSC3079 enum with the wrong number of parameters.
    """
    segs = list(segments)
    if not segs:
        raise UnknownShortPath("empty path")
    for s in segs:
        if not isinstance(s, str):
            raise TypeError("path segments must be str")
    first = segs[0]
    if first in MSC3079_PATHS:
        return _expand_msc3079(first, segs[1:])
    if first not in ("_matrix", "_m"):
        raise UnknownShortPath(f"not a Matrix path: first segment {first[:40]!r}")

    out: list[str] = []
    node: _Node | None = _ROOT
    for i, seg in enumerate(segs):
        if node is None:
            out.extend(segs[i:])
            break
        if seg in node.literals:
            out.append(seg)
            node = node.literals[seg]
        elif SEGMENT_ABBREVIATIONS.get(seg) in node.literals:
            full = SEGMENT_ABBREVIATIONS[seg]
            out.append(full)
            node = node.literals[full]
        elif node.param is not None:
            out.append(seg)  # data: never rewritten
            node = node.param
        else:
            out.append(seg)  # unknown keyword: keep it and everything after it as given
            node = None
    return out


def _expand_msc3079(code: str, params: list[str]) -> list[str]:
    template = _template_segments(MSC3079_PATHS[code])
    arity = _msc3079_arity(MSC3079_PATHS[code])
    if code == "8" and len(params) == arity - 1:
        params = params + [""]  # /8/{roomId}/{eventType}: the empty state key
    if code == "n":
        # /_matrix/client/r0/pushrules/ -- further segments ({scope}/{kind}/{ruleId}/...) follow.
        return template[:-1] + (params if params else [""])
    if len(params) != arity:
        raise UnknownShortPath(
            f"MSC3079 path {code!r} ({MSC3079_PATHS[code]}) takes {arity} parameter(s), got {len(params)}"
        )
    it = iter(params)
    return [next(it) if _is_param(s) else s for s in template]


def expand_query(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Expand abbreviated query keys (``a`` -> ``access_token``...); values and order untouched.

    Keys that are not abbreviations (including full keys) are kept as given; never raises.
    """
    return [(QUERY_ABBREVIATIONS.get(k, k), v) for k, v in pairs]


def shorten_path(segments: list[str], *, msc3079: bool = False) -> list[str]:
    """Inverse helper for firmware/tests: abbreviate the keyword segments of a full path.

    ``expand_path(shorten_path(p)) == p`` for every full path ``p`` under ``/_matrix``.
    With ``msc3079=True`` a path matching an MSC3079 template exactly becomes its enum form.
    """
    segs = list(segments)
    if msc3079:
        for code, template in MSC3079_PATHS.items():
            params = _match_template(_template_segments(template), segs)
            if params is not None and code != "n":
                return [code, *params]
    out: list[str] = []
    node: _Node | None = _ROOT
    for i, seg in enumerate(segs):
        if node is None:
            out.extend(segs[i:])
            break
        if seg in node.literals:
            short = _REVERSE_ABBREVIATIONS.get(seg)
            out.append(short if short is not None and short not in node.literals else seg)
            node = node.literals[seg]
        elif node.param is not None:
            out.append(seg)
            node = node.param
        else:
            out.append(seg)
            node = None
    return out


def _match_template(template: list[str], segs: list[str]) -> list[str] | None:
    if len(template) != len(segs):
        return None
    params = []
    for t, s in zip(template, segs):
        if _is_param(t):
            params.append(s)
        elif t != s:
            return None
    return params


def shorten_query(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Inverse of :func:`expand_query` for keys in :data:`QUERY_ABBREVIATIONS`."""
    return [(_REVERSE_QUERY.get(k, k), v) for k, v in pairs]
