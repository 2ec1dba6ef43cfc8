"""What the Devices page shows once for a new device: its settings (this hub's address as the
browser reached it, the server name, the MQTT/CoAP/coaps ports that are on), a QR code of them, and
ready-to-paste snippets (mosquitto_pub, coap-client, MicroPython's umqtt.simple).

Pure: data in, data out (segno draws the QR code in memory). Why on the server: the snippets are
tested here against what the hub really accepts (the short CoAP path of docs/coap-short-paths.md,
the MQTT default rule of docs/mqtt.md), and the page only shows text it is given."""
from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from typing import Any
import segno

# A Host header we put into shell snippets: a DNS name, IPv4 or a bracketed IPv6, optional port.
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,253})(:[0-9]{1,5})?$")


@dataclass(frozen=True, slots=True)
class Listeners:
    """The device-facing ports that are on (None: off), handed to the core at start-up."""

    http_port: int | None = None
    mqtt_port: int | None = None
    coap_port: int | None = None
    coaps_port: int | None = None


def _without_port(host: str) -> str:
    return host[:host.index("]") + 1] if host.startswith("[") else host.split(":", 1)[0]


def hub_host(host_header: str | None, fallback: str) -> str:
    """The hub's host name as the request reached it (the Host header without its port), or the
    fallback (the server name) when there is none or it is not a plain host name: a forged header
    must not put shell syntax into a snippet."""
    if host_header and _HOST_RE.match(host_header):
        return _without_port(host_header)
    return _without_port(fallback)


def settings(host: str, server_name: str, listeners: Listeners) -> dict[str, Any]:
    """The device's connection settings: server name, host, the ports that are on."""
    answer: dict[str, Any] = {"server_name": server_name, "host": host}
    if listeners.http_port:
        answer["http_port"] = listeners.http_port
    if listeners.mqtt_port:
        answer["mqtt_port"] = listeners.mqtt_port
    if listeners.coap_port:
        answer["coap_port"] = listeners.coap_port
    if listeners.coaps_port:
        answer["coaps_port"] = listeners.coaps_port
    return answer


def topic_room_alias(device_id: str, server_name: str) -> str:
    """The room the MQTT snippet's topic `home/DEVICE/reading` goes to by the default rule
    (docs/mqtt.md: the first two levels name the room)."""
    return f"#mqtt/home/{device_id}:{server_name}"


def snippets(conf: dict[str, Any], user_id: str, device_id: str, token: str,
             psk: tuple[str, str] | None) -> list[dict[str, str]]:
    """[{"label", "text"}]: one command per protocol that is on, filled in with this hub's
    address and ports and the device's token (and key)."""
    host, server_name = conf["host"], conf["server_name"]
    localpart = user_id[1:].split(":", 1)[0]
    topic = f"home/{device_id}/reading"
    out: list[dict[str, str]] = []
    if "mqtt_port" in conf:
        out.append({"label": "MQTT with mosquitto_pub (user name: the account, password: the token)",
                    "text": f"mosquitto_pub -h {host} -p {conf['mqtt_port']} -u '{localpart}' -P '{token}' "
                            f"-t {topic} -m '{{\"temp\": 21.5}}' -q 1"})
    # the room the MQTT line created (any room the account is in works): '#' and '/' escaped
    # (device ids are [A-Za-z0-9_.-] and server names host[:port]: nothing else needs escaping)
    room = topic_room_alias(device_id, server_name).replace("#", "%23").replace("/", "%2F")
    path = f"/_m/c/a/v1/r/{room}/s/m.room.message"
    if "coap_port" in conf:
        out.append({"label": "CoAP with coap-client (libcoap), into the room the MQTT line made",
                    "text": f"coap-client -m post -t json -e '{{\"temp\": 21.5}}' "
                            f"'coap://{host}:{conf['coap_port']}{path}?a={token}'"})
    if "coaps_port" in conf and psk is not None:
        out.append({"label": "coaps (DTLS with the pre-shared key) with coap-client-openssl",
                    "text": f"coap-client-openssl -u '{psk[0]}' -k '{psk[1]}' -m post -t json -e '{{\"temp\": 21.5}}' "
                            f"'coaps://{host}:{conf['coaps_port']}{path}'"})
    if "mqtt_port" in conf:
        out.append({"label": "MicroPython (umqtt.simple)",
                    "text": "from umqtt.simple import MQTTClient\n"
                            f"c = MQTTClient({device_id!r}, {host!r}, port={conf['mqtt_port']}, "
                            f"user={localpart!r}, password={token!r})\n"
                            "c.connect()\n"
                            f"c.publish(b{topic!r}, b'{{\"temp\": 21.5}}', qos=1)\n"
                            "c.disconnect()"})
    return out


def qr_payload(conf: dict[str, Any], user_id: str, device_id: str, token: str,
               psk: tuple[str, str] | None) -> str:
    """The QR code's text: the settings and credentials as compact JSON (a provisioning app or a
    person reads it; it holds the token, so it is shown once, like the token)."""
    body = dict(conf, user_id=user_id, device_id=device_id, access_token=token)
    if psk is not None:
        body["psk_identity"], body["psk"] = psk
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def qr_svg_data_uri(text: str) -> str:
    """The text as a QR code: an SVG `data:` URI an <img> shows under the pages' CSP (img-src data:)."""
    out = io.BytesIO()
    # a standalone SVG (with its xmlns: an <img> does not decode svg_inline's HTML5 form)
    segno.make(text, error="m", micro=False).save(out, kind="svg", scale=4, border=4, dark="#000", light="#fff",
                                                  xmldecl=False, svgclass=None, lineclass=None)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode("ascii")
