"""Route tables outside the Matrix client API, on the client HTTP port (http.py dispatches by prefix):

- `/_gateway/v1/...`: the hub's own API (series for plots, the pages' status and devices);
- `/_gateway/admin/v1/...`: hub admin operations Synapse's admin API has no path for;
- `/_synapse/admin/...`: the part of Synapse's admin API the hub implements, same paths and shapes,
  so existing admin tools work (the version segment, `v1`/`v2`, is part of each route).

Each area's handlers live in their own `<area>_handlers.py`; add routes here in one block per area.
"""
from __future__ import annotations

from . import hub_admin_handlers as hub_admin
from . import mqtt_admin_handlers as mqtt_admin
from . import series_handlers as series
from .router import ClientRouter


def build_gateway_router() -> ClientRouter:
    """Routes under /_gateway/v1/."""
    router = ClientRouter()
    # series (docs/series-api.md)
    router.add("GET", "rooms/{roomId}/series", series.series)
    router.add("GET", "rooms/{roomId}/series/fields", series.fields)
    # the pages' status and devices (admins only)
    router.add("GET", "status", hub_admin.status)
    router.add("POST", "devices", hub_admin.add_device)
    return router


def build_gateway_admin_router() -> ClientRouter:
    """Routes under /_gateway/admin/v1/ (admins only)."""
    router = ClientRouter()
    # the MQTT page: topic rules (`matrix-gateway mqtt map/unmap/maps`) and the live topic tree;
    # GET backup is streamed (backup_http.py), not routed here
    router.add("GET", "mqtt/rules", mqtt_admin.list_rules)
    router.add("POST", "mqtt/rules", mqtt_admin.map_rule)
    router.add("DELETE", "mqtt/rules/{topicFilter...}", mqtt_admin.unmap_rule)
    router.add("GET", "mqtt/topics", mqtt_admin.topics)
    return router


def build_synapse_admin_router() -> ClientRouter:
    """Routes under /_synapse/admin/ (admins only), e.g. "v2/users"."""
    router = ClientRouter()
    return router


GATEWAY_ROUTER = build_gateway_router()
GATEWAY_ADMIN_ROUTER = build_gateway_admin_router()
SYNAPSE_ADMIN_ROUTER = build_synapse_admin_router()


def gateway_route(segments: list[str]) -> tuple[ClientRouter, list[str]] | None:
    """The table and the segments within it for a path outside the client API, or None."""
    if segments[:3] == ["_gateway", "admin", "v1"] and len(segments) > 3:
        return GATEWAY_ADMIN_ROUTER, segments[3:]
    if segments[:2] == ["_gateway", "v1"] and len(segments) > 2:
        return GATEWAY_ROUTER, segments[2:]
    if segments[:2] == ["_synapse", "admin"] and len(segments) > 2:
        return SYNAPSE_ADMIN_ROUTER, segments[2:]
    return None
