"""The admin API's pure rules (matrix_core/admin_rules.py) and the Devices page's settings,
snippets and QR code (matrix_core/device_setup.py), without a hub."""
from __future__ import annotations

import base64
import json

import pytest

from matrix_core import admin_rules, device_setup, errors


def user(name: str, **kw: object) -> dict[str, object]:
    return {"name": f"@{name}:hub", "is_guest": False, "admin": False, "deactivated": False,
            "displayname": name.title(), "creation_ts": 0, **kw}


USERS = [user("carl", creation_ts=3), user("amy", admin=True, creation_ts=2), user("bea", is_guest=True, creation_ts=1),
         user("dan", deactivated=True)]


def names(answer: dict[str, object]) -> list[str]:
    return [u["name"][1:].split(":")[0] for u in answer["users"]]  # type: ignore[index, union-attr]


def test_users_default_order_filters_and_pages() -> None:
    assert names(admin_rules.list_users(USERS, {})) == ["amy", "bea", "carl"]
    assert names(admin_rules.list_users(USERS, {"deactivated": ["true"]})) == ["amy", "bea", "carl", "dan"]
    assert names(admin_rules.list_users(USERS, {"guests": ["false"]})) == ["amy", "carl"]
    assert names(admin_rules.list_users(USERS, {"admins": ["true"]})) == ["amy"]
    assert names(admin_rules.list_users(USERS, {"name": ["CAR"]})) == ["carl"]  # localpart or display name, any case
    assert names(admin_rules.list_users(USERS, {"order_by": ["creation_ts"]})) == ["bea", "amy", "carl"]
    assert names(admin_rules.list_users(USERS, {"order_by": ["creation_ts"], "dir": ["b"]})) == ["carl", "amy", "bea"]
    page = admin_rules.list_users(USERS, {"limit": ["2"]})
    assert names(page) == ["amy", "bea"] and page["next_token"] == "2" and page["total"] == 3
    last = admin_rules.list_users(USERS, {"limit": ["2"], "from": ["2"]})
    assert names(last) == ["carl"] and "next_token" not in last


@pytest.mark.parametrize("query", [{"from": ["-1"]}, {"limit": ["1.5"]}, {"limit": ["٣"]}, {"guests": ["yes"]},
                                   {"order_by": ["password"]}, {"dir": ["x"]}, {"user_id": ["u" * 300]}])
def test_users_bad_params(query: dict[str, list[str]]) -> None:
    with pytest.raises(errors.MatrixError) as caught:
        admin_rules.list_users(USERS, query)
    assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")


def test_rooms_search_order_and_batches() -> None:
    rooms = [{"room_id": f"!{i}:hub", "name": n, "canonical_alias": None, "joined_members": m}
             for i, (n, m) in enumerate([("Kitchen", 2), ("attic", 5), (None, 1)])]
    by_name = admin_rules.list_rooms(rooms, {})
    assert [r["name"] for r in by_name["rooms"]] == ["Kitchen", "attic", None]  # None last
    by_size = admin_rules.list_rooms(rooms, {"order_by": ["joined_members"]})["rooms"]
    assert [r["joined_members"] for r in by_size] == [5, 2, 1]  # largest first, as Synapse
    assert [r["room_id"] for r in admin_rules.list_rooms(rooms, {"search_term": ["!2"]})["rooms"]] == ["!2:hub"]
    middle = admin_rules.list_rooms(rooms, {"from": ["1"], "limit": ["1"]})
    assert (middle["offset"], middle["next_batch"], middle["prev_batch"], middle["total_rooms"]) == (1, 2, 0, 3)


def test_host_header_is_checked() -> None:
    assert device_setup.hub_host("hub.local:8008", "x") == "hub.local"
    assert device_setup.hub_host("[fe80::1]:8008", "x") == "[fe80::1]"
    assert device_setup.hub_host("a;b", "home.example:8448") == "home.example"
    assert device_setup.hub_host("$(reboot)", "hub") == "hub"
    assert device_setup.hub_host(None, "hub") == "hub"


def test_snippets_follow_the_ports_that_are_on() -> None:
    conf = device_setup.settings("hub.local", "hub", device_setup.Listeners(8008, 1883, 5683, None))
    texts = {s["label"].split()[0]: s["text"] for s in device_setup.snippets(conf, "@amy:hub", "t1", "TOKEN", None)}
    assert set(texts) == {"MQTT", "CoAP", "MicroPython"}  # coaps is off: no coaps line
    assert "-h hub.local -p 1883 -u 'amy' -P 'TOKEN' -t home/t1/reading" in texts["MQTT"]
    # the short path of docs/coap-short-paths.md into the MQTT line's room, '#' and '/' escaped
    assert "'coap://hub.local:5683/_m/c/a/v1/r/%23mqtt%2Fhome%2Ft1:hub/s/m.room.message?a=TOKEN'" in texts["CoAP"]
    compile(texts["MicroPython"], "main.py", "exec")
    conf = device_setup.settings("hub.local", "hub", device_setup.Listeners(8008, None, 5683, 5684))
    labels = [s["label"] for s in device_setup.snippets(conf, "@amy:hub", "t1", "TOKEN", ("t1", "KEY"))]
    assert [label.split()[0] for label in labels] == ["CoAP", "coaps"]


def test_qr_code_is_an_svg_data_uri_of_the_settings() -> None:
    conf = device_setup.settings("hub.local", "hub", device_setup.Listeners(8008, 1883, 5683, 5684))
    text = device_setup.qr_payload(conf, "@amy:hub", "t1", "TOKEN", ("t1", "KEY"))
    assert json.loads(text) == dict(conf, user_id="@amy:hub", device_id="t1", access_token="TOKEN",
                                    psk_identity="t1", psk="KEY")
    uri = device_setup.qr_svg_data_uri(text)
    svg = base64.b64decode(uri.removeprefix("data:image/svg+xml;base64,"))
    assert svg.startswith(b"<svg") and b'xmlns="http://www.w3.org/2000/svg"' in svg and b"<path" in svg
