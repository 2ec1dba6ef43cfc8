"""The pure parts of device pictures and large payloads (matrix_core/device_media.py, the MQTT
messages and fan-out with media references): no sockets, no media repository."""
from __future__ import annotations

import pytest

from frontends.mqtt.fanout import FanOut
from frontends.mqtt.messages import media_message_content, parse_mqtt, publish_content
from frontends.mqtt.packets import NO_PROPERTIES, Subscription
from frontends.mqtt.routing import RETAINED_TYPE
from matrix_core.device_media import (clean_mimetype, filename_for, image_size, image_type, media_payload,
                                      media_url, sniff_image)
from tests.test_device_media import jpeg, png
from tests.test_mqtt_fanout import ROOM, Tables, event

URL = "mxc://hub/AbC123"


def test_sniff_and_declared_types() -> None:
    assert sniff_image(jpeg(2, 2)) == "image/jpeg" and sniff_image(png(1, 1)) == "image/png"
    assert sniff_image(b"GIF89a") is None and sniff_image(b"") is None
    assert image_type(png(1, 1), None, sniff=False) is None  # magic bytes only where a rule says
    assert image_type(png(1, 1), None, sniff=True) == "image/png"
    assert image_type(b"x", "image/webp; q=1", sniff=False) == "image/webp"
    assert image_type(b"x", "text/plain", sniff=True) is None
    assert image_type(b"", "image/png", sniff=True) is None
    assert clean_mimetype("Image/PNG ; x=y") == "image/png" and clean_mimetype("no type") is None
    assert clean_mimetype("image/png\r\nX: y") is None and clean_mimetype(7) is None


@pytest.mark.parametrize("data, size", [
    (png(640, 480), (640, 480)), (jpeg(320, 240), (320, 240)), (jpeg(1, 65535), (1, 65535)),
    (b"\x89PNG\r\n\x1a\n", None), (b"\xff\xd8\xff\xe0\x00", None), (b"\xff\xd8" + b"\x00" * 20, None),
    (b"\xff\xd8\xff\xe0\x00\x01", None), (b"", None), (b"plain text", None),
])
def test_image_size_reads_headers_and_never_raises(data: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data) == size


def test_filenames() -> None:
    assert filename_for("camera/door/snapshot", "image/jpeg") == "snapshot.jpg"
    assert filename_for("z2m/bridge/devices", "application/json") == "devices.json"
    assert filename_for("a/b/", "application/x-unknown") == "b.bin"
    assert filename_for("cam/shot.png", "image/png") == "shot.png"


def test_media_reference_round_trip_needs_the_bytes() -> None:
    mqtt = publish_content("cam/door", b"\xff\xd8\xff", 1, NO_PROPERTIES, media_payload(URL, "image/jpeg", 3))
    assert media_url(mqtt["payload"]) == URL
    assert parse_mqtt(mqtt) is None  # no bytes at hand: not a message
    assert parse_mqtt(mqtt, {URL: b"\xff\xd8\xff"}.get) == ("cam/door", b"\xff\xd8\xff", 1, {})
    content = media_message_content(mqtt, jpeg(8, 6))
    assert content["msgtype"] == "m.image" and content["url"] == URL and content["body"] == "door.jpg"
    assert content["info"]["w"] == 8 and content["info"]["h"] == 6 and content["mqtt"] is mqtt
    big = publish_content("z2m/bridge/devices", b"", 1, NO_PROPERTIES, media_payload(URL, "application/json", 9))
    file = media_message_content(big, None)
    assert file["msgtype"] == "m.file" and file["filename"] == "devices.json"
    assert file["info"] == {"mimetype": "application/json", "size": 9}
    assert file["body"] == "z2m/bridge/devices: <application/json, 9 bytes>"


def test_fan_out_of_media_events_reads_the_cache_only() -> None:
    t = Tables(joined={("@bob:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/#", 1))
    blobs: dict[str, bytes] = {}
    t.fanout.blobs = blobs
    mqtt = publish_content("garden/cam", b"", 1, NO_PROPERTIES, media_payload(URL, "image/png", 5))
    message = event("m.room.message", media_message_content(mqtt, png(1, 1)))
    assert t.out(message) == {}  # bytes not read yet: nothing (never a JSON stand-in)
    blobs[URL] = b"exact"
    assert t.out(message)["bob"].payload == b"exact"
    retained = event(RETAINED_TYPE, mqtt, state_key="garden/cam")
    assert t.out(retained)["bob"].payload == b"exact" and t.out(retained)["bob"].retain is False
    session = t.sessions["bob"]
    got = t.fanout.retained(session, Subscription("garden/#", 1), ROOM, {(RETAINED_TYPE, "garden/cam"): retained},
                            0, 0.0)
    assert [(m.topic, m.payload, m.retain) for m in got] == [("garden/cam", b"exact", True)]
    assert isinstance(t.fanout, FanOut)


def test_odd_msgtypes_are_not_media() -> None:
    """Content is what a sender wrote: a list as msgtype (found by tests/test_fuzz_e2e.py) must not
    break the fan-out or the broker's media check."""
    from frontends.mqtt.broker import _media_url_of

    t = Tables(joined={("@bob:hub", ROOM)})
    t.session("bob", "@bob:hub", Subscription("garden/#", 1))
    for msgtype in (["m.image"], {"a": 1}, 7, None):
        odd = event("m.room.message", {"msgtype": msgtype, "body": "x", "mqtt": {"topic": "garden/x"}})
        assert _media_url_of(odd) is None
        t.out(odd)  # never raises
