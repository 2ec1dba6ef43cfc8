"""The one route table of the client-server API (paths after /_matrix/client/<version>/).

HTTP and CoAP both dispatch through `ROUTER`; adding a route here makes it reachable by both.
"""
from __future__ import annotations

from . import account_data_handlers as ad
from . import appservice_handlers as appservice
from . import auth_handlers as a
from . import cross_signing_handlers as xs
from . import device_handlers as dv
from . import device_media_handlers as dmedia
from . import directory_handlers as d
from . import discovery_handlers as disc
from . import ephemeral_handlers as eph
from . import key_backup_handlers as kb
from . import keys_handlers as keys
from . import membership_handlers as m
from . import presence_handlers as pr
from . import push_handlers as p
from . import pusher_handlers as pushers
from . import relation_handlers as rel
from . import room_handlers as r
from . import sliding_sync_handlers as ss
from . import timestamp_handlers as ts
from .router import ClientRouter


def build_router() -> ClientRouter:
    router = ClientRouter()
    add = router.add
    add("GET", "versions", a.versions)
    add("GET", "login", a.login_flows)
    add("POST", "login", a.login)
    add("POST", "logout", a.logout)
    add("POST", "logout/all", a.logout_all)
    add("GET", "account/whoami", a.whoami)
    add("POST", "register", a.register)
    add("GET", "capabilities", a.capabilities)
    add("GET", "profile/{userId}", a.get_profile)
    add("GET", "profile/{userId}/{field}", a.get_profile_field)
    add("PUT", "profile/{userId}/{field}", a.set_profile_field)
    add("POST", "user/{userId}/filter", a.create_filter)
    add("GET", "user/{userId}/filter/{filterId}", a.get_filter)

    add("POST", "createRoom", r.create_room)
    add("POST", "join/{roomIdOrAlias}", r.join)
    add("POST", "knock/{roomIdOrAlias}", r.knock)
    add("POST", "rooms/{roomId}/join", r.join_room_id)
    add("POST", "rooms/{roomId}/leave", r.leave)
    add("POST", "rooms/{roomId}/invite", r.invite)
    add("POST", "rooms/{roomId}/kick", r.kick)
    add("POST", "rooms/{roomId}/ban", r.ban)
    add("POST", "rooms/{roomId}/unban", r.unban)
    add("PUT", "rooms/{roomId}/send/{eventType}/{txnId}", r.send)
    add("POST", "rooms/{roomId}/send/{eventType}", r.send)
    add("GET", "rooms/{roomId}/state", r.get_state)
    add("GET", "rooms/{roomId}/state/{eventType}", r.get_state_event)
    add("GET", "rooms/{roomId}/state/{eventType}/{stateKey}", r.get_state_event)
    add("PUT", "rooms/{roomId}/state/{eventType}", r.put_state)
    add("PUT", "rooms/{roomId}/state/{eventType}/{stateKey}", r.put_state)
    add("PUT", "rooms/{roomId}/redact/{eventId}/{txnId}", r.redact)
    add("POST", "rooms/{roomId}/redact/{eventId}", r.redact)
    add("GET", "rooms/{roomId}/event/{eventId}", r.get_event)
    add("GET", "rooms/{roomId}/messages", r.messages)
    add("GET", "rooms/{roomId}/members", r.members)
    add("GET", "rooms/{roomId}/joined_members", r.joined_members)
    add("GET", "joined_rooms", r.joined_rooms)
    add("GET", "sync", r.sync)
    add("GET", "directory/room/{roomAlias}", r.get_alias)
    add("PUT", "directory/room/{roomAlias}", r.put_alias)
    add("DELETE", "directory/room/{roomAlias}", r.delete_alias)
    add("GET", "publicRooms", r.public_rooms)

    # Ephemeral events (issue 13): typing, receipts, read markers
    add("PUT", "rooms/{roomId}/typing/{userId}", eph.set_typing)
    add("POST", "rooms/{roomId}/receipt/{receiptType}/{eventId}", eph.post_receipt)
    add("POST", "rooms/{roomId}/read_markers", eph.read_markers)

    # Account data, room tags, presence, forget, user directory, a room's aliases (issue 13)
    add("GET", "user/{userId}/account_data/{type}", ad.get_global)
    add("PUT", "user/{userId}/account_data/{type}", ad.put_global)
    add("GET", "user/{userId}/rooms/{roomId}/account_data/{type}", ad.get_room)
    add("PUT", "user/{userId}/rooms/{roomId}/account_data/{type}", ad.put_room)
    add("GET", "user/{userId}/rooms/{roomId}/tags", ad.get_tags)
    add("PUT", "user/{userId}/rooms/{roomId}/tags/{tag}", ad.put_tag)
    add("DELETE", "user/{userId}/rooms/{roomId}/tags/{tag}", ad.delete_tag)
    add("PUT", "presence/{userId}/status", pr.put_status)
    add("GET", "presence/{userId}/status", pr.get_status)
    add("POST", "rooms/{roomId}/forget", m.forget)
    add("GET", "rooms/{roomId}/aliases", d.room_aliases)
    add("POST", "user_directory/search", d.search_users)
    # Devices and the account behind user-interactive auth (device_handlers.py); VoIP discovery
    add("GET", "devices", dv.list_devices)
    add("GET", "devices/{deviceId}", dv.get_device)
    add("PUT", "devices/{deviceId}", dv.put_device)
    add("DELETE", "devices/{deviceId}", dv.delete_device)
    add("POST", "delete_devices", dv.delete_devices)
    add("POST", "account/password", dv.change_password)
    add("POST", "account/deactivate", dv.deactivate)
    add("GET", "account/3pid", dv.third_party_ids)
    add("GET", "voip/turnServer", disc.turn_server)
    add("GET", "thirdparty/protocols", disc.thirdparty_protocols)
    add("GET", "rooms/{roomId}/timestamp_to_event", ts.timestamp_to_event)  # v1.6, jump to a date

    # Push rules and notifications (push_handlers.py). A trailing slash ("pushrules/", as
    # matrix-js-sdk asks) leaves an empty last segment, which the last capture takes as "".
    add("GET", "pushrules", p.get_all)
    add("GET", "pushrules/{scope}", p.get_scope)
    add("GET", "pushrules/{scope}/{kind}", p.get_kind)
    add("GET", "pushrules/{scope}/{kind}/{ruleId}", p.get_rule)
    add("PUT", "pushrules/{scope}/{kind}/{ruleId}", p.put_rule)
    add("DELETE", "pushrules/{scope}/{kind}/{ruleId}", p.delete_rule)
    add("GET", "pushrules/{scope}/{kind}/{ruleId}/{attr}", p.get_attr)
    add("PUT", "pushrules/{scope}/{kind}/{ruleId}/{attr}", p.put_attr)
    add("GET", "notifications", p.notifications)
    # Pushers (issue 13): push gateways that wake phones
    add("GET", "pushers", pushers.get_pushers)
    add("POST", "pushers/set", pushers.set_pusher)

    # Relations, threads and event context (relation_handlers.py)
    add("GET", "rooms/{roomId}/relations/{eventId}", rel.relations)
    add("GET", "rooms/{roomId}/relations/{eventId}/{relType}", rel.relations)
    add("GET", "rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", rel.relations)
    add("GET", "rooms/{roomId}/threads", rel.threads)
    add("GET", "rooms/{roomId}/context/{eventId}", rel.context)

    # End-to-end encryption, server side (issue 14): device and one-time keys, to-device messages
    add("POST", "keys/upload", keys.upload)
    add("POST", "keys/query", keys.query)
    add("POST", "keys/claim", keys.claim)
    add("GET", "keys/changes", keys.changes)
    add("PUT", "sendToDevice/{eventType}/{txnId}", keys.send_to_device)
    # Cross-signing (issue 14, cross_signing_handlers.py)
    add("POST", "keys/device_signing/upload", xs.upload_signing_keys)
    add("POST", "keys/signatures/upload", xs.upload_signatures)
    # Server-side key backup (issue 14, key_backup_handlers.py)
    add("POST", "room_keys/version", kb.create_version)
    add("GET", "room_keys/version", kb.get_version)
    add("GET", "room_keys/version/{version}", kb.get_version)
    add("PUT", "room_keys/version/{version}", kb.put_version)
    add("DELETE", "room_keys/version/{version}", kb.delete_version)
    for path in ("room_keys/keys", "room_keys/keys/{roomId}", "room_keys/keys/{roomId}/{sessionId}"):
        add("PUT", path, kb.put_keys)
        add("GET", path, kb.get_keys)
        add("DELETE", path, kb.delete_keys)
    # Devices' pictures (issue 15): bytes to the media repository, then an m.image event
    add("POST", "rooms/{roomId}/org.matrix_gateway.image", dmedia.post_image)
    # Application services (issue 17): the ping; their registration is POST register
    add("POST", "appservice/{appserviceId}/ping", appservice.ping)
    # Simplified Sliding Sync, MSC4186 (issue 19): Element X's sync (sliding_sync_handlers.py)
    add("POST", "org.matrix.simplified_msc3575/sync", ss.sliding_sync)
    add("GET", "io.element.msc4360/thread_updates", ss.thread_updates)  # MSC4360's companion endpoint
    add("GET", "thread_updates", ss.thread_updates)
    return router


ROUTER = build_router()
