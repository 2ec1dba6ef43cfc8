"""MQTT application messages <-> Matrix event content. Pure.

A PUBLISH becomes an `m.room.message` with msgtype `org.matrix_gateway.mqtt`: Element shows its
`body` (topic and a readable payload); the `mqtt` object carries the topic, the payload in the
lossless mapping shared with CoAP (frontends/payload_mapping.py) and the MQTT 5 properties that
travel with a message. A retained PUBLISH is the same `mqtt` object as room state
(`org.matrix_gateway.mqtt.retained`, state key = topic). Events that did not come from MQTT
are published as a small JSON document (docs/mqtt.md).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable

from matrix_core.device_media import MEDIA_KIND, file_content, filename_for, image_content, media_url
from ..payload_mapping import PayloadError, content_to_mqtt_payload, mqtt_payload_to_content
from .packets import NO_PROPERTIES, Properties
from .routing import MESSAGE_MSGTYPE, RETAINED_TYPE
from .topics import is_valid_topic_name

BODY_PREVIEW = 300
VALUE_CHARS = 120  # a topic's last value on the MQTT page's tree
_FORWARDED = ("payload_format_indicator", "content_type", "response_topic", "message_expiry_interval")


def publish_content(topic: str, payload: bytes, qos: int, properties: Properties,
                    mapped: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `mqtt` object for a PUBLISH: topic, payload (lossless), QoS and forwarded properties.
    `mapped`: the payload's content already made (a media reference, device_media.py)."""
    if mapped is None:
        hint = properties.get("content_type") if properties else None
        mapped = mqtt_payload_to_content(payload, hint)
    mqtt: dict[str, Any] = {"topic": topic, "payload": mapped, "qos": qos}
    if properties:
        props: dict[str, Any] = {k: properties[k] for k in _FORWARDED if k in properties}
        if "correlation_data" in properties:
            props["correlation_data"] = base64.b64encode(properties["correlation_data"]).decode("ascii")
        if "user_property" in properties:
            props["user_property"] = [[k, v] for k, v in properties["user_property"]]
        if props:
            mqtt["properties"] = props
    return mqtt


def message_content(mqtt: dict[str, Any]) -> dict[str, Any]:
    """The whole m.room.message content around an `mqtt` object."""
    return {"msgtype": MESSAGE_MSGTYPE, "body": preview(mqtt), "mqtt": mqtt}


def media_message_content(mqtt: dict[str, Any], image: bytes | None) -> dict[str, Any]:
    """The m.room.message around an `mqtt` object whose payload is in the media repository:
    `m.image` (with `image`, its bytes, for the size in pixels) or `m.file`, so Element shows the
    picture or offers the file; the `mqtt` object still says topic, QoS and properties."""
    payload = mqtt["payload"]
    url, mimetype, size = payload["url"], payload["mimetype"], payload["size"]
    name = filename_for(mqtt["topic"], mimetype)
    if image is not None:
        content = image_content(name, url, mimetype, image)
    else:
        content = file_content(preview(mqtt), name, url, mimetype, size)
    content["mqtt"] = mqtt
    return content


def preview(mqtt: dict[str, Any]) -> str:
    payload = mqtt["payload"]
    kind = payload.get("kind")
    if kind == MEDIA_KIND:
        return f"{mqtt['topic']}: <{payload.get('mimetype')}, {payload.get('size')} bytes>"
    if kind == "text":
        shown = payload["text"]
    elif kind == "json":
        shown = payload.get("text") or json.dumps(payload["value"], separators=(",", ":"), ensure_ascii=False)
    else:
        shown = f"<{len(base64.b64decode(payload.get('base64', ''))) if 'base64' in payload else '?'} bytes>" \
            if kind == "bytes" else f"<{kind}>"
    if len(shown) > BODY_PREVIEW:
        shown = shown[:BODY_PREVIEW] + "…"
    return f"{mqtt['topic']}: {shown}"


def parse_mqtt(mqtt: Any, blobs: Callable[[str], bytes | None] | None = None
               ) -> tuple[str, bytes, int, dict[str, Any]] | None:
    """(topic, payload, qos, properties) from an `mqtt` object, or None if it is not one.
    `blobs`: the bytes of media-repository payloads read beforehand, by mxc URL (the broker's
    cache); a media payload not there gives None."""
    if not isinstance(mqtt, dict):
        return None
    topic = mqtt.get("topic")
    if not isinstance(topic, str) or not is_valid_topic_name(topic):
        return None
    url = media_url(mqtt.get("payload"))
    if url is not None:
        found = blobs(url) if blobs is not None else None
        if found is None:
            return None
        payload = found
    else:
        try:
            payload = content_to_mqtt_payload(mqtt.get("payload"))
        except PayloadError:
            return None
    qos = mqtt.get("qos", 1)
    if qos not in (0, 1, 2):
        qos = 1
    props: dict[str, Any] = {}
    raw = mqtt.get("properties")
    if isinstance(raw, dict):
        for key in ("payload_format_indicator", "message_expiry_interval"):
            value = raw.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
                props[key] = value
        for key in ("content_type", "response_topic"):
            if isinstance(raw.get(key), str):
                props[key] = raw[key]
        if "response_topic" in props and not is_valid_topic_name(props["response_topic"]):
            del props["response_topic"]
        if isinstance(raw.get("correlation_data"), str):
            try:
                props["correlation_data"] = base64.b64decode(raw["correlation_data"], validate=True)
            except (binascii.Error, ValueError):
                pass
        pairs = raw.get("user_property")
        if isinstance(pairs, list):
            ok = [(p[0], p[1]) for p in pairs
                  if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str)]
            if ok:
                props["user_property"] = ok
        if props.get("payload_format_indicator") not in (None, 0, 1):
            del props["payload_format_indicator"]
    return topic, payload, qos, props


def matrix_event_payload(event_id: str, sender: str, event_type: str, content: dict[str, Any],
                         origin_server_ts: int) -> bytes:
    """The payload for an event that did not come from MQTT (e.g. a text sent from Element)."""
    doc = {"event_id": event_id, "sender": sender, "type": event_type, "content": content,
           "origin_server_ts": origin_server_ts}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")


def as_properties(props: dict[str, Any]) -> Properties:
    return props if props else NO_PROPERTIES


def payload_text(payload: Any) -> str:
    """The mapped payload (frontends/payload_mapping.py's kinds) as short text. Pure."""
    if not isinstance(payload, dict):
        return "?"
    kind = payload.get("kind")
    if kind == "text" and isinstance(payload.get("text"), str):
        shown = payload["text"]
    elif kind == "json":
        text = payload.get("text")
        shown = text if isinstance(text, str) else json.dumps(payload.get("value"), separators=(",", ":"),
                                                              ensure_ascii=False)
    elif kind == "bytes":
        raw = payload.get("base64")
        try:
            shown = f"<{len(base64.b64decode(raw))} bytes>" if isinstance(raw, str) else "<bytes>"
        except ValueError:
            shown = "<bytes>"
    elif kind == MEDIA_KIND:
        shown = f"<{payload.get('mimetype')}, {payload.get('size')} bytes>"
    else:
        shown = f"<{kind}>"
    return shown if len(shown) <= VALUE_CHARS else shown[:VALUE_CHARS] + "…"


def topic_entry(event_type: str, content: Any, state_key: str | None) -> tuple[str, str, bool] | None:
    """(topic, value text, retained) of an MQTT message or retained message, else None. Pure.
    A retained message with empty content is a cleared retained message: value ""."""
    if not isinstance(content, dict):
        return None
    if event_type == RETAINED_TYPE and state_key is not None:
        if not content:
            return state_key, "", True
        return state_key, payload_text(content.get("payload")), True
    if event_type != "m.room.message":
        return None
    mqtt = content.get("mqtt")
    if not isinstance(mqtt, dict) or not isinstance(mqtt.get("topic"), str):
        return None
    if content.get("msgtype") != MESSAGE_MSGTYPE and not isinstance(mqtt.get("payload"), dict):
        return None
    return mqtt["topic"], payload_text(mqtt.get("payload")), False
