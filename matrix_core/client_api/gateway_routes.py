"""Route tables outside the Matrix client API, on the client HTTP port (http.py dispatches by prefix):

- `/_gateway/v1/...`: the hub's own API (series for plots, the pages' status and devices);
- `/_gateway/admin/v1/...`: hub admin operations Synapse's admin API has no path for;
- `/_synapse/admin/...`: the part of Synapse's admin API the hub implements, same paths and shapes,
  so existing admin tools work (the version segment, `v1`/`v2`, is part of each route).

Each area's handlers live in their own `<area>_handlers.py`; add routes here in one block per area.
"""
from __future__ import annotations

from . import hub_admin_devices_handlers as hub_devices
from . import hub_admin_handlers as hub_admin
from . import mqtt_admin_handlers as mqtt_admin
from . import series_handlers as series
from . import setup_handlers as setup
from . import synapse_admin_handlers as synapse_admin
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
    # first run: the setup code makes the first admin (setup_handlers.py; no access token)
    router.add("GET", "setup", setup.setup_state)
    router.add("POST", "setup", setup.complete_setup)
    # the Devices page (issue 18, admin): whether the signed-in user is an admin
    router.add("GET", "account", hub_devices.account)
    return router


def build_gateway_admin_router() -> ClientRouter:
    """Routes under /_gateway/admin/v1/ (admins only)."""
    router = ClientRouter()
    # the Devices page (issue 18, admin): accounts with devices, a device with its settings and QR code
    router.add("GET", "accounts", hub_devices.accounts)
    router.add("POST", "users/{userId}/devices", hub_devices.add_device)
    router.add("PUT", "users/{userId}/household", hub_devices.set_household)
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
    # Synapse's admin API (issue 18, admin; docs/admin-api.md)
    router.add("GET", "v1/server_version", synapse_admin.server_version)
    router.add("GET", "v2/users", synapse_admin.list_users)
    router.add("GET", "v2/users/{userId}", synapse_admin.get_user)
    router.add("PUT", "v2/users/{userId}", synapse_admin.put_user)
    router.add("POST", "v1/deactivate/{userId}", synapse_admin.deactivate)
    router.add("GET", "v1/users/{userId}/joined_rooms", synapse_admin.joined_rooms)
    router.add("GET", "v2/users/{userId}/devices", synapse_admin.list_devices)
    router.add("POST", "v2/users/{userId}/devices", synapse_admin.create_device)
    router.add("DELETE", "v2/users/{userId}/devices/{deviceId}", synapse_admin.delete_device)
    router.add("GET", "v1/rooms", synapse_admin.list_rooms)
    router.add("GET", "v1/rooms/{roomId}", synapse_admin.get_room)
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
