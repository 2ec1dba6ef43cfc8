"""The MQTT page's and Status page's admin API against a hub started by the CLI (raw HTTP, real
mosquitto_pub): topic rules as `matrix-gateway mqtt map/unmap/maps` make them, the live topic tree
(a long-poll), the status figures (media, federation peers, uplinks) and the streamed backup."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, gateway_cli
from tests.test_mqtt_peers import mosquitto_pub

ADMIN = "/_gateway/admin/v1"
MEDIA_BYTES = 16 << 20


def topics(gw: GatewayProcess, token: str, query: str = "") -> dict[str, Any]:
    status, body = gw.request("GET", f"{ADMIN}/mqtt/topics{query}", token=token)
    assert status == 200, body
    return body


def publish_until_routed(gw: GatewayProcess, token: str, topic: str, payload: str, room_id: str,
                         deadline_s: float = 5.0) -> dict[str, Any]:
    """Publish until the topic tree shows the message went to `room_id` (the broker applies rules
    within a second); the tree's entry."""
    deadline = time.monotonic() + deadline_s
    while True:
        mosquitto_pub(gw.mqtt_port, "alice", PASSWORD, topic, payload, 1)
        entry = {t["topic"]: t for t in topics(gw, token)["topics"]}.get(topic)
        if entry is not None and entry["room_id"] == room_id:
            return entry
        assert time.monotonic() < deadline, (entry, room_id)


def test_non_admins_get_403_everywhere(gateway: GatewayProcess) -> None:
    token = gateway.login("bob", PASSWORD)
    for method, path, body in (("GET", "/mqtt/rules", None), ("POST", "/mqtt/rules", {"topic_filter": "a/#", "room": "#x"}),
                               ("DELETE", "/mqtt/rules/a%2F%23", None), ("GET", "/mqtt/topics", None),
                               ("GET", "/backup", None)):
        status, answer = gateway.request(method, ADMIN + path, body, token=token)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), (method, path, answer)
    status, answer = gateway.request("GET", ADMIN + "/mqtt/rules")
    assert status == 401, answer
    assert gateway_cli("mqtt", "maps", "--data-dir", str(gateway.data_dir)).stdout.strip() == ""


def test_topics_published_before_the_first_look_are_in_the_tree(gateway: GatewayProcess) -> None:
    """The tree follows the stream only from its first request; what came before is read from
    what the hub keeps: retained messages (room state) and recent history."""
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "early/lamp", "off", 1, "-r")
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "early/temp", "19", 1)
    found = {t["topic"]: (t["value"], t["retained"]) for t in topics(gateway, gateway.login("alice", PASSWORD))["topics"]}
    assert found["early/lamp"] == ("off", True) and found["early/temp"] == ("19", False), found


def test_map_list_unmap_and_bad_input(gateway: GatewayProcess) -> None:
    token = gateway.login("alice", PASSWORD)
    status, body = gateway.request("POST", "/_matrix/client/v3/createRoom",
                                   {"room_alias_name": "apigarden", "name": "Garden"}, token=token)
    assert status == 200, body
    garden = body["room_id"]
    for bad in ("a/#/b", "$share/g/a", "$SYS/#", "", "a+/b", 5):
        status, answer = gateway.request("POST", ADMIN + "/mqtt/rules", {"topic_filter": bad, "room": garden}, token=token)
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM"), (bad, answer)
    status, answer = gateway.request("POST", ADMIN + "/mqtt/rules", {"topic_filter": "g/#", "room": "#nowhere"}, token=token)
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), answer
    status, answer = gateway.request("POST", ADMIN + "/mqtt/rules", {"topic_filter": "g/#", "room": "!nope:localhost"},
                                     token=token)
    assert status == 404, answer
    assert gateway_cli("mqtt", "maps", "--data-dir", str(gateway.data_dir)).stdout.strip() == ""  # nothing stored

    status, answer = gateway.request("POST", ADMIN + "/mqtt/rules", {"topic_filter": "apigarden/+/moisture",
                                                                     "room": "#apigarden"}, token=token)
    assert status == 200 and answer == {"topic_filter": "apigarden/+/moisture", "room_id": garden}, answer
    status, answer = gateway.request("GET", ADMIN + "/mqtt/rules", token=token)
    assert answer == {"rules": [{"topic_filter": "apigarden/+/moisture", "room_id": garden}]}
    # the CLI sees the same rule, and the running broker applies it
    assert gateway_cli("mqtt", "maps", "--data-dir", str(gateway.data_dir)).stdout.split() == ["apigarden/+/moisture", garden]
    entry = publish_until_routed(gateway, token, "apigarden/bed1/moisture", "41", garden)
    assert entry["value"] == "41" and entry["retained"] is False
    q = urllib.parse.quote(garden, safe="")
    status, body = gateway.request("GET", f"/_matrix/client/v3/rooms/{q}/messages?dir=b&limit=5", token=token)
    assert any(e["content"].get("mqtt", {}).get("topic") == "apigarden/bed1/moisture" for e in body["chunk"])

    status, answer = gateway.request("DELETE", ADMIN + "/mqtt/rules/" + urllib.parse.quote("apigarden/+/moisture", safe=""),
                                     token=token)
    assert status == 200, answer
    status, answer = gateway.request("DELETE", ADMIN + "/mqtt/rules/apigarden/+/moisture", token=token)
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), answer
    assert gateway.request("GET", ADMIN + "/mqtt/rules", token=token)[1] == {"rules": []}


def test_topic_tree_long_poll(gateway: GatewayProcess) -> None:
    token = gateway.login("alice", PASSWORD)
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "tree/lamp/state", "on", 1, "-r")
    first = topics(gateway, token)
    found = {t["topic"]: t for t in first["topics"]}
    assert found["tree/lamp/state"]["value"] == "on" and found["tree/lamp/state"]["retained"] is True
    assert first["truncated"] is False and first["broker"] is True
    # nothing new: a long-poll waits, then answers as soon as a publish comes
    result: dict[str, Any] = {}

    def poll() -> None:
        result["body"] = topics(gateway, token, f"?since={first['next']}&timeout=10000")
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)  # the poll is waiting (nothing can signal that from outside): it must not have answered
    assert "body" not in result
    sent = time.monotonic()
    mosquitto_pub(gateway.mqtt_port, "alice", PASSWORD, "tree/lamp/power", "x" * 500, 1)
    waiter.join(10)
    assert result["at"] - sent < 2.0
    (entry,) = result["body"]["topics"]
    assert entry["topic"] == "tree/lamp/power" and entry["value"] == "x" * 120 + "…"
    assert result["body"]["next"] > first["next"]
    # a limit answers the most recent and says there is more
    some = topics(gateway, token, "?limit=1")
    assert len(some["topics"]) == 1 and some["topics"][0]["topic"] == "tree/lamp/power" and some["truncated"] is True
    for bad in ("?since=x", "?limit=many", "?timeout=1e3"):  # out of range is clamped, as other int params
        status, answer = gateway.request("GET", f"{ADMIN}/mqtt/topics{bad}", token=token)
        assert status == 400 and answer["errcode"] == "M_INVALID_PARAM", (bad, answer)


def test_status_figures(gateway: GatewayProcess) -> None:
    token = gateway.login("alice", PASSWORD)
    status, body = gateway.request("GET", "/_gateway/v1/status", token=token)
    assert status == 200, body
    assert isinstance(body["media_bytes"], int) and isinstance(body["media_count"], int)
    assert body["federation_peers"] == [] and body["uplinks"] == []
    assert isinstance(body["database_bytes"], int)


def test_backup_download_is_the_cli_archive(gateway: GatewayProcess) -> None:
    token = gateway.login("alice", PASSWORD)
    req = urllib.request.Request(gateway.http_url + ADMIN + "/backup", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        disposition = resp.headers["Content-Disposition"]
        assert resp.headers["Content-Type"] == "application/gzip"
        data = resp.read()
    assert re.fullmatch(r'attachment; filename="matrix-gateway-backup-\d{4}-\d\d-\d\d-\d{6}\.tar\.gz"', disposition)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        assert names[0] == "MANIFEST.json"
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        assert manifest["format"] == "matrix-gateway-backup"
        assert set(manifest["files"]) <= set(names) and "homeserver.db" in names
        assert tar.getmember("homeserver.db").size == manifest["files"]["homeserver.db"]["size"]
    assert not list(gateway.data_dir.glob(".backup-*"))  # the staged snapshot is gone
    # and `matrix-gateway restore` accepts it
    archive = gateway.data_dir.parent / "web-backup.tar.gz"
    archive.write_bytes(data)
    restored = gateway.data_dir.parent / "restored"
    gateway_cli("restore", str(archive), "--data-dir", str(restored))
    assert (restored / "homeserver.db").is_file()


def test_backup_download_abandoned_part_way(gateway: GatewayProcess) -> None:
    """A client that goes away mid-download stops the archive being made: the staged snapshot is
    removed, no traceback is logged; a slow client's whole download does not grow the hub's
    memory. 16 MB of random media (it does not compress) make the archive far longer than the
    hub's queue of chunks and the sockets' buffers."""

    token = gateway.login("alice", PASSWORD)
    req = urllib.request.Request(gateway.http_url + "/_matrix/media/v3/upload?filename=noise.bin", data=os.urandom(MEDIA_BYTES),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
    log_before = gateway.read_log()
    sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=30)
    sock.sendall(f"GET {ADMIN}/backup HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
    deadline = time.monotonic() + 20
    while list(gateway.data_dir.glob(".backup-*")) or "abandoned" not in gateway.read_log():
        assert time.monotonic() < deadline, list(gateway.data_dir.glob(".backup-*"))
        time.sleep(0.05)
    assert "Traceback" not in gateway.read_log()[len(log_before):]
    # a whole download by a slow client (a phone on Wi-Fi; a small receive buffer): the hub's
    # memory does not grow with the archive (it is streamed, not made ahead of the client)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    slow.settimeout(30)
    slow.connect(("127.0.0.1", gateway.http_port))
    slow.sendall(f"GET {ADMIN}/backup HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    before = peak = gateway.rss_bytes()
    received = len(slow.recv(32 * 1024))
    # the client stalls for 2 s (nothing to await: it is the client's pace): a hub that made the
    # archive ahead of it would hold the rest (16 MB) in memory by then
    stalled_until = time.monotonic() + 2.0
    while time.monotonic() < stalled_until:
        peak = max(peak, gateway.rss_bytes())
        time.sleep(0.1)
    while chunk := slow.recv(256 * 1024):
        received += len(chunk)
    slow.close()
    assert received > MEDIA_BYTES
    assert peak - before < 6 << 20, (before, peak)
