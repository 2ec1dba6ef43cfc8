"""Which client-server spec versions /versions advertises, and what each one requires of us.

Why this matters: clients pick endpoints by the versions a server claims. A server that
claimed v1.11 made clients fetch media through authenticated-media paths that did not exist
(issue 13); matrix-js-sdk 43 refuses a server below v1.5 (its MINIMUM_MATRIX_VERSION).

How the list is decided. A version is advertised when every endpoint that version requires of
the parts of the spec we implement is in the route table and answers (tests/test_versions_truth.py
calls each one on a running hub). `VERSION_REQUIREMENTS[v]` is that whole list for version v: the
core API (every version), the optional modules we implement (device management, push, account
data and tags, typing, receipts, read markers, presence, event context, VoIP's turnServer, user
directory) and what each version added (spec changelog, client-server API):

- v1.1: /knock; key backup and cross-signing upload (end-to-end encryption's endpoints:
  keys_handlers.py, cross_signing_handlers.py, key_backup_handlers.py). /login/sso/redirect
  belongs to SSO login, which the hub does not offer.
- v1.2: nothing we claim (/hierarchy is the Spaces module; registration tokens are a UIA stage
  the hub does not offer).
- v1.3: event relationships, GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]
  (core API; refresh tokens are optional: the hub issues none).
- v1.4: threads, GET /v1/rooms/{roomId}/threads; private and threaded receipts, m.replace (by
  the receipts and relations endpoints above).
- v1.5: nothing new (m.reference relations).
- v1.6: GET /v1/rooms/{roomId}/timestamp_to_event (core API).
- v1.7: push conditions event_property_is/contains, m.mentions push rules, m.annotation (by
  push rules and relations); async media upload (POST /_matrix/media/v1/create and PUT
  /_matrix/media/v3/upload/{serverName}/{mediaId}, in the media namespace: tests/test_media_http.py);
  /v1/login/get_token is optional (capability m.get_login_token: false).
- v1.8: room version 11 (in /capabilities).
- v1.9: the .m.rule.suppress_edits push rule.
- v1.10: recursion on the relations endpoints (`recurse`, answered with `recursion_depth`).
- v1.11: authenticated media, GET /_matrix/client/v1/media/{config,download,thumbnail} (the
  content repository, issue 15: client_api/media_http.py, its own route family because bodies
  stream; the `media/` paths below are resolved there, not in the JSON route table). Uploads
  (POST /_matrix/media/v3/upload, v1.7's /v1/media/create) live in the media namespace beside it.
  GET /v1/media/preview_url is answered 404 M_UNRECOGNIZED (no URL previews: see media_http.py).
- r0.6.1: not advertised: the r0 API differs (prev_content at the top level, ...) and no client
  we test needs it; r0 paths still route (old clients keep working).

Unstable features: Simplified Sliding Sync (`org.matrix.simplified_msc3575`, sliding_sync_handlers.py).
Its opt-in extensions (MSC4360's threads among them) need no flag: a client asks for them per request.

Not claimed at any version (known gaps, by module): URL previews, room upgrades,
server-side filtering of ignored users, spaces, SSO, guest access, third-party invites and
networks, search, reporting, OpenID, 3PID changes (m.3pid_changes: false).
"""
from __future__ import annotations

# The core API and the modules we implement: required by every version we advertise.
# (method, path after /_matrix/client/<version>/ as a client sends it; {name} is a parameter)
CORE: tuple[tuple[str, str], ...] = (
    ("GET", "versions"),
    ("GET", "login"),
    ("POST", "login"),
    ("POST", "logout"),
    ("POST", "logout/all"),
    ("POST", "register"),
    ("GET", "account/whoami"),
    ("POST", "account/password"),
    ("POST", "account/deactivate"),
    ("GET", "account/3pid"),
    ("GET", "capabilities"),
    ("GET", "profile/{userId}"),
    ("GET", "profile/{userId}/displayname"),
    ("PUT", "profile/{userId}/displayname"),
    ("GET", "profile/{userId}/avatar_url"),
    ("PUT", "profile/{userId}/avatar_url"),
    ("POST", "user/{userId}/filter"),
    ("GET", "user/{userId}/filter/{filterId}"),
    ("GET", "sync"),
    ("POST", "createRoom"),
    ("GET", "joined_rooms"),
    ("POST", "join/{roomIdOrAlias}"),
    ("POST", "rooms/{roomId}/join"),
    ("POST", "rooms/{roomId}/invite"),
    ("POST", "rooms/{roomId}/leave"),
    ("POST", "rooms/{roomId}/forget"),
    ("POST", "rooms/{roomId}/kick"),
    ("POST", "rooms/{roomId}/ban"),
    ("POST", "rooms/{roomId}/unban"),
    ("PUT", "rooms/{roomId}/send/{eventType}/{txnId}"),
    ("GET", "rooms/{roomId}/event/{eventId}"),
    ("GET", "rooms/{roomId}/state"),
    ("GET", "rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("GET", "rooms/{roomId}/messages"),
    ("GET", "rooms/{roomId}/members"),
    ("GET", "rooms/{roomId}/joined_members"),
    ("GET", "rooms/{roomId}/aliases"),
    ("GET", "directory/room/{roomAlias}"),
    ("PUT", "directory/room/{roomAlias}"),
    ("DELETE", "directory/room/{roomAlias}"),
    ("GET", "publicRooms"),
    ("POST", "user_directory/search"),
    # Device management
    ("GET", "devices"),
    ("GET", "devices/{deviceId}"),
    ("PUT", "devices/{deviceId}"),
    ("DELETE", "devices/{deviceId}"),
    ("POST", "delete_devices"),
    # Client config (account data; m.direct for direct messaging) and room tagging
    ("GET", "user/{userId}/account_data/{type}"),
    ("PUT", "user/{userId}/account_data/{type}"),
    ("GET", "user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("PUT", "user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("GET", "user/{userId}/rooms/{roomId}/tags"),
    ("PUT", "user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("DELETE", "user/{userId}/rooms/{roomId}/tags/{tag}"),
    # Typing notifications, receipts, read markers, presence
    ("PUT", "rooms/{roomId}/typing/{userId}"),
    ("POST", "rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    ("POST", "rooms/{roomId}/read_markers"),
    ("GET", "presence/{userId}/status"),
    ("PUT", "presence/{userId}/status"),
    # Push notifications
    ("GET", "pushrules/"),
    ("GET", "pushrules/global/"),
    ("GET", "pushrules/{scope}/{kind}/{ruleId}"),
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}"),
    ("DELETE", "pushrules/{scope}/{kind}/{ruleId}"),
    ("GET", "pushrules/{scope}/{kind}/{ruleId}/enabled"),
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}/enabled"),
    ("GET", "pushrules/{scope}/{kind}/{ruleId}/actions"),
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}/actions"),
    ("GET", "pushers"),
    ("POST", "pushers/set"),
    ("GET", "notifications"),
    # Event context; voice over IP
    ("GET", "rooms/{roomId}/context/{eventId}"),
    ("GET", "voip/turnServer"),
)

# What each version added to the endpoints we claim (see the module docstring for the rest).
ADDED: dict[str, tuple[tuple[str, str], ...]] = {
    "v1.1": (("POST", "knock/{roomIdOrAlias}"),),
    "v1.2": (),
    "v1.3": (
        ("GET", "rooms/{roomId}/relations/{eventId}"),
        ("GET", "rooms/{roomId}/relations/{eventId}/{relType}"),
        ("GET", "rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"),
    ),
    "v1.4": (("GET", "rooms/{roomId}/threads"),),
    "v1.5": (),
    "v1.6": (("GET", "rooms/{roomId}/timestamp_to_event"),),
    "v1.7": (),
    "v1.8": (),
    "v1.9": (),
    "v1.10": (),
    "v1.11": (
        ("GET", "media/config"),
        ("GET", "media/download/{serverName}/{mediaId}"),
        ("GET", "media/download/{serverName}/{mediaId}/{fileName}"),
        ("GET", "media/thumbnail/{serverName}/{mediaId}"),
    ),
}

ORDER = tuple(ADDED)


def _requirements() -> dict[str, tuple[tuple[str, str], ...]]:
    table: dict[str, tuple[tuple[str, str], ...]] = {}
    needed = CORE
    for version in ORDER:
        needed = needed + ADDED[version]
        table[version] = needed
    return table


#: version -> every endpoint (method, path) that version requires of what we claim.
VERSION_REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = _requirements()

#: Paths under this prefix are the authenticated media family (/_matrix/client/v1/media/...),
#: served by client_api/media_http.py's own router.
MEDIA_PREFIX = "media/"

#: What /versions answers.
SUPPORTED_VERSIONS: tuple[str, ...] = ("v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
                                       "v1.10", "v1.11")

#: Unstable features that work. Simplified Sliding Sync (MSC4186, issue 19): POST
#: /unstable/org.matrix.simplified_msc3575/sync (client_api/sliding_sync_handlers.py); Element X
#: and matrix-js-sdk look for this key (the MSC has no stable path yet).
UNSTABLE_FEATURES: dict[str, bool] = {"org.matrix.simplified_msc3575": True}
