"""The MQTT page's admin API (admins only), under /_gateway/admin/v1/mqtt/ (gateway_routes.py):

- `GET rules`: the hub admin's topic rules, as `matrix-gateway mqtt maps` lists them;
- `POST rules {"topic_filter", "room"}`: `mqtt map` (room: a room id or alias of this hub);
- `DELETE rules/{topicFilter}` (the filter %-encoded; its '/' may stay as they are): `mqtt unmap`;
- `GET topics?since=&timeout=&limit=`: the broker's live topic tree, a long-poll.

Rules are written to the same table the CLI writes (store/mqtt.py), through the hub's group
commit; the broker's rule poll (every 0.5 s) applies them as it applies the CLI's. The filter
check is the broker's (injected: service/hub_ops.py), so the page accepts exactly what the CLI does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors, params
from ..store import mqtt as mqtt_store
from .request import ApiRequest, ApiResponse, ok

if TYPE_CHECKING:
    from ..homeserver import Homeserver

MAX_TOPICS_RETURNED = 1000
MAX_TIMEOUT_MS = 30_000


async def _admin(hs: Homeserver, req: ApiRequest) -> None:
    requester = await hs.accounts.authenticate(req.access_token)
    if not requester.is_admin:
        raise errors.forbidden("Only hub admins may manage MQTT topic rules and topics")


def _check_filter(hs: Homeserver, topic_filter: object) -> str:
    check = hs.hub_ops.valid_rule_filter
    if not isinstance(topic_filter, str) or not topic_filter or check is None or not check(topic_filter):
        raise errors.invalid_param("'topic_filter' must be an MQTT topic filter a rule can use "
                                   "(levels split by '/', '+' and a last '#' as whole levels, no $share/, no leading $)")
    return topic_filter


async def _room_id(hs: Homeserver, room: object) -> str:
    """A room id or alias of this hub -> its room id (an alias without a server part is ours)."""
    if not isinstance(room, str) or not room or len(room) > params.MAX_ID_LENGTH:
        raise errors.invalid_param("'room' must be a room id or alias of this hub")
    if room.startswith("#"):
        alias = room if ":" in room else f"{room}:{hs.server_name}"
        found = await hs.rooms.resolve_alias_local(alias)
    else:
        found = room if room.startswith("!") and hs.rooms.room_version(room) is not None else None
    if found is None:
        raise errors.not_found(f"No such room on this hub: {room}")
    return found


async def list_rules(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await _admin(hs, req)
    rules = sorted(await mqtt_store.load_rules(hs.db))
    return ok({"rules": [{"topic_filter": f, "room_id": r} for f, r in rules]})


async def map_rule(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await _admin(hs, req)
    body = req.json_object()
    topic_filter = _check_filter(hs, body.get("topic_filter"))
    room_id = await _room_id(hs, body.get("room"))
    await hs.db.write(mqtt_store.put_rule(topic_filter, room_id))
    return ok({"topic_filter": topic_filter, "room_id": room_id})


async def unmap_rule(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    await _admin(hs, req)
    topic_filter = req.params["topicFilter"]
    if not await hs.db.write(mqtt_store.remove_rule(topic_filter)):
        raise errors.not_found(f"No rule for {topic_filter!r}")
    return ok({})


async def topics(hs: Homeserver, req: ApiRequest) -> ApiResponse:
    """Topics updated after `since` (0: all), most recent first, at most `limit` (≤ 1000), with
    `next` to ask from and `truncated`; waits up to `timeout` ms for one when there is none."""
    await _admin(hs, req)
    since = req.int_arg("since", 0, 0, 2**53)
    limit = req.int_arg("limit", MAX_TOPICS_RETURNED, 1, MAX_TOPICS_RETURNED)
    timeout = req.int_arg("timeout", 0, 0, MAX_TIMEOUT_MS)
    tree = hs.hub_ops.topic_tree
    if tree is None:
        return ok({"topics": [], "next": since, "truncated": False, "broker": False})
    await tree.ready()
    found, upto, truncated = tree.changes(since, limit)
    if not found and timeout:
        await tree.wait(since, timeout / 1000)
        found, upto, truncated = tree.changes(since, limit)
    return ok({"topics": found, "next": upto, "truncated": truncated, "broker": True})
