"""/versions tells the truth (issue 13): every version advertised has all the endpoints it
requires of what we claim (client_api/spec_versions.py) in the one route table, each answering
on a running hub with something other than 404/405 M_UNRECOGNIZED, and the behaviour a version
added (private receipts, mention push rules, room version 11, ...) is there."""
from __future__ import annotations

import io
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

import pytest
from PIL import Image

from matrix_core.client_api import media_http, spec_versions
from matrix_core.client_api.routes import ROUTER
from matrix_core.errors import MatrixError

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess

ADVERTISED = spec_versions.SUPPORTED_VERSIONS
V3 = "/_matrix/client/v3"


def Q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def required() -> list[tuple[str, str]]:
    """Every endpoint some advertised version requires, each once."""
    return list(dict.fromkeys(e for v in ADVERTISED for e in spec_versions.VERSION_REQUIREMENTS[v]))


def test_advertised_versions_are_the_ones_decided() -> None:
    assert set(ADVERTISED) <= set(spec_versions.VERSION_REQUIREMENTS)
    assert "v1.5" in ADVERTISED  # matrix-js-sdk 43's MINIMUM_MATRIX_VERSION
    assert "r0.6.1" not in ADVERTISED
    assert "v1.11" in ADVERTISED  # authenticated media (issue 15)
    assert not {"v1.12", "v1.13"} & set(ADVERTISED)
    # a version is claimed only with every version before it
    assert list(ADVERTISED) == list(spec_versions.ORDER[: len(ADVERTISED)])


def test_every_required_endpoint_is_in_the_route_table() -> None:
    missing = []
    for method, path in required():
        try:
            if path.startswith(spec_versions.MEDIA_PREFIX):  # the authenticated media family
                media_http.AUTHENTICATED.resolve(method, path.split("/")[1:])
            else:
                ROUTER.resolve(method, path.split("/"))
        except MatrixError as err:
            missing.append(f"{method} {path} ({err.errcode} {err.status})")
    assert not missing, "advertised versions need endpoints the route table lacks:\n" + "\n".join(missing)


class Probe:
    """Calls endpoints on the hub with real parameters: a room, an event in it, a device."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.token = gw.login("alice", PASSWORD)
        self.user = "@alice:localhost"
        status, body = gw.request("GET", f"{V3}/account/whoami", token=self.token)
        self.device = body["device_id"]
        self.room = self.call("POST", "createRoom", {"preset": "private_chat"})[1]["room_id"]
        self.event = self.call("PUT", f"rooms/{Q(self.room)}/send/m.room.message/probe0",
                               {"msgtype": "m.text", "body": "probe"})[1]["event_id"]
        self.filter = self.call("POST", f"user/{Q(self.user)}/filter", {})[1]["filter_id"]
        self.txn = itertools.count(1)
        self.media = self._upload_png()

    def _upload_png(self) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        req = urllib.request.Request(f"{self.gw.http_url}/_matrix/media/v3/upload", data=buf.getvalue(), method="POST",
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["content_uri"]).split("/")[-1]

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        if path.startswith(spec_versions.MEDIA_PREFIX):  # /_matrix/client/v1/media/...: answers may be files
            return self.media_call(method, path, token)
        if body is None and method in ("POST", "PUT"):
            body = {}
        return self.gw.request(method, f"{V3}/{path}", body, token=token or self.token)

    def media_call(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.gw.http_url}/_matrix/client/v1/{path}", method=method,
                                     headers={"Authorization": f"Bearer {token or self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
        return status, json.loads(raw) if ctype.startswith("application/json") else raw

    def fill(self, path: str) -> str:
        values = {
            "userId": self.user, "roomId": self.room, "roomIdOrAlias": self.room, "eventId": self.event,
            "eventType": "org.example.probe", "stateKey": "", "txnId": f"probe{next(self.txn)}",
            "filterId": self.filter, "roomAlias": "#versions-probe:localhost", "deviceId": self.device,
            "type": "org.example.probe", "tag": "u.probe", "receiptType": "m.read", "scope": "global",
            "kind": "content", "ruleId": "probe", "relType": "m.annotation",
            "serverName": "localhost", "mediaId": self.media, "fileName": "probe.png",
        }
        parts = []
        for part in path.split("/"):
            if part.startswith("{"):
                part = Q(values[part[1:-1]])
            parts.append(part)
        filled = "/".join(parts)
        return filled + "?width=4&height=4" if path.startswith("media/thumbnail/") else filled


BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "rooms/{roomId}/typing/{userId}"): {"typing": False},
    ("PUT", "presence/{userId}/status"): {"presence": "online"},
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}"): {"pattern": "probe", "actions": ["notify"]},
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}/enabled"): {"enabled": True},
    ("PUT", "pushrules/{scope}/{kind}/{ruleId}/actions"): {"actions": ["notify"]},
    ("POST", "user_directory/search"): {"search_term": "alice"},
    ("PUT", "profile/{userId}/displayname"): {"displayname": "Alice"},
    ("PUT", "directory/room/{roomAlias}"): {"room_id": "?"},
    ("PUT", "rooms/{roomId}/send/{eventType}/{txnId}"): {"body": "probe"},
}
# Last, each with a token of its own: they end a session or leave the room.
LAST = [("POST", "rooms/{roomId}/leave"), ("POST", "rooms/{roomId}/forget"), ("POST", "logout"),
        ("POST", "logout/all")]


def test_every_required_endpoint_answers_on_the_hub(gateway: GatewayProcess) -> None:
    probe = Probe(gateway)
    BODIES[("PUT", "directory/room/{roomAlias}")] = {"room_id": probe.room}
    BODIES[("POST", "rooms/{roomId}/read_markers")] = {"m.fully_read": probe.event}
    unrecognized = []
    endpoints = [e for e in required() if e not in LAST] + [e for e in LAST if e in required()]
    gateway.add_user("versions-probe", PASSWORD)  # logout/all ends every session of its user
    for method, path in endpoints:
        token = None
        if path == "logout":
            token = gateway.login("bob", PASSWORD)
        elif path == "logout/all":
            token = gateway.login("versions-probe", PASSWORD)
        status, body = probe.call(method, probe.fill(path), BODIES.get((method, path)), token=token)
        if status in (404, 405) and isinstance(body, dict) and body.get("errcode") == "M_UNRECOGNIZED":
            unrecognized.append(f"{method} {path} -> {status} {body}")
    assert not unrecognized, "advertised versions need endpoints the hub does not answer:\n" + "\n".join(unrecognized)


# -- what a version added besides endpoints ---------------------------------------------------

def _private_receipt(probe: Probe) -> str | None:
    status, body = probe.call("POST", f"rooms/{Q(probe.room)}/receipt/m.read.private/{Q(probe.event)}", {})
    return None if status == 200 else f"m.read.private receipt: {status} {body}"


def _rule_ids(probe: Probe) -> set[str]:
    status, body = probe.call("GET", "pushrules/")
    if status != 200:
        return set()
    return {rule["rule_id"] for kind in body.get("global", {}).values() for rule in kind}


def _mention_rules(probe: Probe) -> str | None:
    missing = {".m.rule.is_user_mention", ".m.rule.is_room_mention"} - _rule_ids(probe)
    return f"default push rules lack {sorted(missing)}" if missing else None


def _property_conditions(probe: Probe) -> str | None:
    """v1.7's push conditions event_property_is / event_property_contains are accepted."""
    for kind, value in (("event_property_is", "probe"), ("event_property_contains", "probe")):
        rule = {"conditions": [{"kind": kind, "key": "content.body" if kind.endswith("is") else "content.tags",
                                "value": value}], "actions": []}
        status, body = probe.call("PUT", f"pushrules/global/override/probe.{kind}", rule)
        if status != 200:
            return f"a push rule with {kind}: {status} {body}"
        probe.call("DELETE", f"pushrules/global/override/probe.{kind}")
    return None


def _room_version_11(probe: Probe) -> str | None:
    caps = probe.call("GET", "capabilities")[1]["capabilities"]["m.room_versions"]["available"]
    return None if caps.get("11") == "stable" else f"room version 11 not available: {caps}"


def _suppress_edits(probe: Probe) -> str | None:
    return None if ".m.rule.suppress_edits" in _rule_ids(probe) else "no .m.rule.suppress_edits push rule"


def _recursion(probe: Probe) -> str | None:
    status, body = probe.call("GET", f"rooms/{Q(probe.room)}/relations/{Q(probe.event)}?recurse=true")
    return None if status == 200 and "recursion_depth" in body else f"relations ?recurse=true: {status} {body}"


def _authenticated_media(probe: Probe) -> str | None:
    """v1.11: media download through /v1/media with a token; the unauthenticated path is frozen."""
    status, body = probe.media_call("GET", f"media/download/localhost/{probe.media}")
    if status != 200 or not isinstance(body, bytes) or not body.startswith(b"\x89PNG"):
        return f"authenticated download: {status}"
    req = urllib.request.Request(f"{probe.gw.http_url}/_matrix/media/v3/download/localhost/{probe.media}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return f"unauthenticated download of new media answered {resp.status}"
    except urllib.error.HTTPError as err:
        return None if err.code == 404 else f"unauthenticated download: {err.code}"


FEATURES: dict[str, list[Callable[[Probe], str | None]]] = {
    "v1.4": [_private_receipt],
    "v1.7": [_mention_rules, _property_conditions],
    "v1.8": [_room_version_11],
    "v1.9": [_suppress_edits],
    "v1.10": [_recursion],
    "v1.11": [_authenticated_media],
}


@pytest.mark.parametrize("version", [v for v in ADVERTISED if v in FEATURES])
def test_what_each_advertised_version_added_works(gateway: GatewayProcess, version: str) -> None:
    probe = Probe(gateway)
    problems = [p for check in FEATURES[version] if (p := check(probe)) is not None]
    assert not problems, f"{version}: " + "; ".join(problems)


def test_versions_answer_is_the_decided_list(gateway: GatewayProcess) -> None:
    status, body = gateway.request("GET", "/_matrix/client/versions")
    assert status == 200
    assert body == {"versions": list(ADVERTISED), "unstable_features": spec_versions.UNSTABLE_FEATURES}


# -- v1.6: GET /v1/rooms/{roomId}/timestamp_to_event --------------------------------------------

def test_closest_event_in_each_direction_and_errors(gateway: GatewayProcess) -> None:
    alice = gateway.login("alice", PASSWORD)
    bob = gateway.login("bob", PASSWORD)
    status, created = gateway.request("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=alice)
    assert status == 200, created
    room = created["room_id"]
    sent = []
    for i in range(5):
        status, body = gateway.request("PUT", f"/_matrix/client/v3/rooms/{Q(room)}/send/m.room.message/ts{i}",
                                       {"msgtype": "m.text", "body": f"m{i}"}, token=alice)
        assert status == 200, body
        status, ev = gateway.request("GET", f"/_matrix/client/v3/rooms/{Q(room)}/event/{Q(body['event_id'])}",
                                     token=alice)
        sent.append((ev["origin_server_ts"], ev["event_id"]))
        time.sleep(0.002)  # distinct timestamps
    assert sorted({ts for ts, _ in sent}) == [ts for ts, _ in sent]  # distinct, increasing
    base = f"/_matrix/client/v1/rooms/{Q(room)}/timestamp_to_event"
    middle_ts, middle_id = sent[2]
    for direction in ("f", "b"):
        status, body = gateway.request("GET", f"{base}?ts={middle_ts}&dir={direction}", token=alice)
        assert (status, body) == (200, {"event_id": middle_id, "origin_server_ts": middle_ts})
    status, body = gateway.request("GET", f"{base}?ts={sent[-1][0] + 1}&dir=b", token=alice)
    assert body["event_id"] == sent[-1][1]
    status, body = gateway.request("GET", f"{base}?ts={sent[1][0] + 1}&dir=f", token=alice)
    assert body["event_id"] == sent[2][1]
    status, body = gateway.request("GET", f"{base}?ts={sent[-1][0] + 60_000}&dir=f", token=alice)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = gateway.request("GET", f"{base}?ts=0&dir=b", token=alice)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")  # nothing before the room existed

    for query, code, errcode in (("dir=f", 400, "M_MISSING_PARAM"), (f"ts={middle_ts}", 400, "M_MISSING_PARAM"),
                                 (f"ts={middle_ts}&dir=x", 400, "M_INVALID_PARAM"), ("ts=soon&dir=f", 400, "M_INVALID_PARAM")):
        status, body = gateway.request("GET", f"{base}?{query}", token=alice)
        assert (status, body["errcode"]) == (code, errcode), query
    status, body = gateway.request("GET", f"{base}?ts={middle_ts}&dir=f", token=bob)  # not a member
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
