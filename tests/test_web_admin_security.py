"""Security and robustness review of the hub's web/admin surfaces (issue 18, by issue 20's
standards): raw HTTP against the hub started by the CLI. alice is the hub admin (conftest), bob is
not. Each test names what it guards; the first three failed before their fix."""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess, free_port
from tests.test_appservice import AS_TOKEN, new_hub


@pytest.fixture(scope="module")
def hub(gateway: GatewayProcess) -> dict[str, Any]:
    return {"gw": gateway, "admin": gateway.login("alice", PASSWORD), "bob": gateway.login("bob", PASSWORD)}


def raw(gw: GatewayProcess, method: str, path: str, body: bytes | None = None,
        token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (the path is sent exactly as given: %-junk, dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=35)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_upload(gw: GatewayProcess, token: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=60)
    try:
        conn.request("POST", "/_matrix/media/v3/upload?filename=noise.bin", body=data,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_device_route_gives_no_token_to_a_deactivated_account(hub: dict[str, Any]) -> None:
    """`POST /_gateway/v1/devices {"user"}` made a working access token for a deactivated account
    (its whoami answered 200): deactivation undone by the back door. Now refused as the Devices
    page's route refuses it, and no device is made."""
    gw, admin = hub["gw"], hub["admin"]
    status, body = gw.request("PUT", "/_synapse/admin/v2/users/%40dora%3Alocalhost", {"password": "pw-pw-pw-pw"},
                              token=admin)
    assert status == 201, body
    status, body = gw.request("POST", "/_synapse/admin/v1/deactivate/%40dora%3Alocalhost", {}, token=admin)
    assert status == 200, body
    status, body = gw.request("POST", "/_gateway/v1/devices", {"device_id": "ZOMBIE", "user": "dora"}, token=admin)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    status, devices = gw.request("GET", "/_synapse/admin/v2/users/%40dora%3Alocalhost/devices", token=admin)
    assert status == 200 and devices["devices"] == [], devices


def test_answers_with_tokens_are_never_stored(hub: dict[str, Any]) -> None:
    """A new device's token, coaps key and QR code (and every admin answer) carry
    `Cache-Control: no-store`: no browser cache or proxy keeps them. The client API is unchanged."""
    gw, admin = hub["gw"], hub["admin"]
    for method, path, body in [
        ("POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices",
         {"device_id": "NOSTORE1", "display_name": "x" * 100, "psk": True}),
        ("POST", "/_gateway/v1/devices", {"device_id": "NOSTORE2"}),
        ("GET", "/_synapse/admin/v2/users", None),
        ("GET", "/_gateway/admin/v1/accounts", None),
    ]:
        status, headers, data = raw(gw, method, path, json.dumps(body).encode() if body else None, admin)
        assert status == 200, (path, data)
        assert headers.get("cache-control") == "no-store", (path, headers)
        assert headers.get("x-content-type-options") == "nosniff", (path, headers)
        assert headers["access-control-allow-origin"] == "*"  # bearer tokens in a header: CORS * is safe
        if "devices" in path:
            assert "access_token" in json.loads(data)
    status, headers, _ = raw(gw, "GET", "/_matrix/client/versions")
    assert status == 200 and "cache-control" not in headers


def test_hub_admin_api_takes_the_token_only_from_the_header(hub: dict[str, Any]) -> None:
    """`?access_token=` on the hub's own admin API (the backup download above all: a GET URL one
    pastes into a browser or wget, then kept in history and proxy logs) is refused with 401
    M_MISSING_TOKEN, before any work; the header works; the client API still takes it (spec)."""
    gw, admin = hub["gw"], hub["admin"]
    for path in ("/_gateway/admin/v1/backup", "/_gateway/admin/v1/accounts"):
        status, _, data = raw(gw, "GET", f"{path}?access_token={admin}")
        assert status == 401 and json.loads(data)["errcode"] == "M_MISSING_TOKEN", (path, data)
    status, headers, data = raw(gw, "GET", "/_gateway/admin/v1/accounts", token=admin)
    assert status == 200, data
    status, _, data = raw(gw, "GET", f"/_matrix/client/v3/account/whoami?access_token={admin}")
    assert status == 200 and json.loads(data)["user_id"] == "@alice:localhost", data


def test_deactivated_admin_and_guest_reach_no_admin_route(hub: dict[str, Any]) -> None:
    """A deactivated admin's token is dead at once (401); a guest account gets 403."""
    gw, admin = hub["gw"], hub["admin"]
    gw.add_user("carol", PASSWORD, admin=True)
    gw.add_user("gina", PASSWORD, guest=True)
    carol, gina = gw.login("carol", PASSWORD), gw.login("gina", PASSWORD)
    status, _ = gw.request("GET", "/_synapse/admin/v2/users", token=carol)
    assert status == 200
    status, body = gw.request("GET", "/_synapse/admin/v2/users", token=gina)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = gw.request("POST", "/_synapse/admin/v1/deactivate/%40carol%3Alocalhost", {}, token=admin)
    assert status == 200, body
    for path in ("/_synapse/admin/v2/users", "/_gateway/admin/v1/accounts", "/_gateway/v1/status",
                 "/_gateway/admin/v1/backup"):
        status, body = gw.request("GET", path, token=carol)
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", (path, body)
    status, body = gw.request("POST", "/_gateway/v1/setup",
                              {"setup_code": "AAAA-AAAA-AAAA", "username": "eve", "password": "long enough pw"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body  # set up already: dead for good


UNKNOWN = ["/_synapse/admin", "/_synapse/admin/", "/_synapse/admin/v1/nope", "/_synapse/admin/v9/users",
           "/_gateway/admin/v1", "/_gateway/admin/v1/nope", "/_gateway/admin/v1/mqtt", "/_gateway/v1/nope"]


@pytest.mark.parametrize("path", UNKNOWN)
def test_unknown_admin_routes_are_json_404(hub: dict[str, Any], path: str) -> None:
    status, headers, data = raw(hub["gw"], "GET", path, token=hub["admin"])
    assert status == 404 and json.loads(data)["errcode"] == "M_UNRECOGNIZED", (path, data)
    assert headers["content-type"].startswith("application/json")


JUNK: list[tuple[str, str, bytes | None]] = [
    ("PUT", "/_synapse/admin/v2/users/%40x%3Alocalhost", b"{bad"),
    ("PUT", "/_synapse/admin/v2/users/%40x%3Alocalhost", b"[]"),
    ("PUT", "/_synapse/admin/v2/users/%40x%3Alocalhost", b'{"password": 5, "admin": "yes"}'),
    ("PUT", "/_synapse/admin/v2/users/%40" + "a" * 5000 + "%3Alocalhost", b'{"password": "pw-pw-pw-pw"}'),
    ("GET", "/_synapse/admin/v2/users/%ff%fe", None),
    ("GET", "/_synapse/admin/v2/users/%40%00%3Alocalhost", None),
    ("GET", "/_synapse/admin/v1/rooms/%21%ff", None),
    ("GET", "/_synapse/admin/v1/rooms?limit=99999999999", None),
    ("GET", "/_synapse/admin/v1/rooms?from=-1", None),
    ("GET", "/_synapse/admin/v2/users?name=" + "x" * 300, None),
    ("GET", "/_synapse/admin/v2/users?order_by=%ff", None),
    ("POST", "/_synapse/admin/v1/deactivate/%40x%3Alocalhost", b'{"erase": 1}'),
    ("POST", "/_synapse/admin/v2/users/%40alice%3Alocalhost/devices", b'{"device_id": null}'),
    ("PUT", "/_gateway/admin/v1/users/%40alice%3Alocalhost/household", b'{"household": "yes"}'),
    ("POST", "/_gateway/admin/v1/users/%40alice%3Alocalhost/devices", b'{"device_id": "' + b"d" * 5000 + b'"}'),
    ("POST", "/_gateway/admin/v1/mqtt/rules", b'{"topic_filter": "a/#", "room": 5}'),
    ("POST", "/_gateway/admin/v1/mqtt/rules", b'{"topic_filter": "' + b"a/" * 30000 + b'", "room": "#x"}'),
    ("DELETE", "/_gateway/admin/v1/mqtt/rules/%ff%fe/%2F%2F", None),
    ("GET", "/_gateway/admin/v1/mqtt/topics?since=%ff", None),
    ("GET", "/_gateway/v1/rooms/%ff/series?field=x", None),
    ("GET", "/_gateway/v1/rooms/%21x%3Alocalhost/series?field=temp&buckets=99999999999999999999", None),
    ("POST", "/_gateway/v1/setup", b'{"setup_code": 5}'),
    ("POST", "/_gateway/v1/setup", b"x" * 200_000),
    ("PUT", "/_synapse/admin/v2/users/%40x%3Alocalhost", b"[" * 100_000),  # nesting past the recursion limit
    ("POST", "/_gateway/admin/v1/mqtt/rules", b'{"a":' * 20_000),
    ("PUT", "/_gateway/admin/v1/users/%40alice%3Alocalhost/household", b'"\\ud800"'),
]


def test_junk_input_is_a_clear_4xx_never_a_500(hub: dict[str, Any]) -> None:
    """Malformed JSON, wrong types, %-junk and huge values in path parameters and bodies: each
    a 4xx Matrix error, nothing logged as a traceback."""
    gw = hub["gw"]
    for method, path, body in JUNK:
        status, headers, data = raw(gw, method, path, body, hub["admin"])
        assert 400 <= status < 500, (method, path[:80], status, data[:200])
        assert headers["content-type"].startswith("application/json"), (path[:80], headers)
        assert json.loads(data)["errcode"].startswith("M_"), data
    assert "Traceback" not in gw.log_path().read_text()


@pytest.mark.parametrize("path", ["/web/..%2fsetup.py", "/web/%2e%2e%2f%2e%2e%2fgateway.toml", "/web/%2e%2e",
                                  "/web/..%5capp.js", "/web/%00", "/web/", "/web/app.js/..%2f..%2fhub.address"])
def test_static_path_tricks_serve_nothing(hub: dict[str, Any], path: str) -> None:
    """The pages are a fixed in-memory set: no path reaches the file system."""
    status, _, data = raw(hub["gw"], "GET", path)
    assert status == 404, (path, data[:100])


def test_backup_downloads_queue_is_capped(hub: dict[str, Any]) -> None:
    """While a backup is being made, a burst of download requests queued without bound, each to
    make a whole archive in turn (for clients long gone, too). Now at most MAX_WAITING (2) wait;
    the next gets 429 M_LIMIT_EXCEEDED at once. Then, once the slow download goes, a new one works."""
    gw, admin = hub["gw"], hub["admin"]
    req = (f"GET /_gateway/admin/v1/backup HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {admin}\r\n"
           "Connection: close\r\n\r\n").encode()
    # random media (it does not compress): the archive outgrows the queue and the socket buffers
    status, _, data = raw_upload(gw, admin, os.urandom(12 << 20))
    assert status == 200, data
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    slow.settimeout(30)
    slow.connect(("127.0.0.1", gw.http_port))
    slow.sendall(req)
    assert slow.recv(4096).startswith(b"HTTP/1.1 200")  # it holds the turn, and reads no more
    others: list[socket.socket] = []
    refused = None
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=30)
            others.append(sock)
            sock.sendall(req)
            sock.settimeout(1.0)
            try:
                answer = sock.recv(4096)
            except socket.timeout:
                continue  # waiting its turn
            refused = answer
            break
        assert refused is not None and refused.startswith(b"HTTP/1.1 429"), refused
        assert b"M_LIMIT_EXCEEDED" in refused
        assert len(others) <= 4, len(others)  # MAX_WAITING waited (a slow hub may count one late)
    finally:
        slow.close()
        for sock in others:
            sock.close()
    # the abandoned ones drain (each stops at its first write); then a download works again
    deadline = time.monotonic() + 30
    while True:
        status, headers, data = raw(gw, "GET", "/_gateway/admin/v1/backup", token=admin)
        if status != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the answer's own retry advice, shortened
    assert status == 200 and headers["content-type"] == "application/gzip", data[:200]
    assert "Traceback" not in gw.log_path().read_text()


def test_an_appservice_reaches_no_admin_route_even_as_an_admin(tmp_path: Path) -> None:
    """An application service's token, its own or masquerading (`?user_id=`) as a hub admin inside
    its (non-exclusive) namespace, is never an admin: 403 on every admin table."""
    registration = f"""id: widebridge
url: http://127.0.0.1:{free_port()}
as_token: {AS_TOKEN}
hs_token: hs-token-wide
sender_localpart: widebot
rate_limited: false
namespaces:
  users:
    - exclusive: false
      regex: '@.*:localhost'
  aliases: []
  rooms: []
"""
    with new_hub(tmp_path, registration) as gw:
        gw.add_user("root", PASSWORD, admin=True)
        for path in ("/_synapse/admin/v2/users", "/_gateway/admin/v1/accounts", "/_gateway/v1/status"):
            for query in ("", "?user_id=%40root%3Alocalhost"):
                status, body = gw.request("GET", path + query, token=AS_TOKEN)
                assert status == 403 and body["errcode"] == "M_FORBIDDEN", (path, query, body)
        status, who = gw.request("GET", "/_matrix/client/v3/account/whoami?user_id=%40root%3Alocalhost", token=AS_TOKEN)
        assert status == 200 and who["user_id"] == "@root:localhost", who  # the masquerade itself works


# /_gateway/v1 routes any signed-in user (or, for setup, anyone) may call; every other route there
# and every route of the two admin tables is for admins. A new route must be put on one side.
PUBLIC_GATEWAY_ROUTES = {("GET", "rooms/{roomId}/series"), ("GET", "rooms/{roomId}/series/fields"),
                         ("GET", "setup"), ("POST", "setup"), ("GET", "account")}
CAPTURES = {"{userId}": "%40alice%3Alocalhost", "{deviceId}": "NOPE", "{roomId}": "%21nope%3Alocalhost",
            "{topicFilter...}": "a/b"}


def admin_routes() -> list[tuple[str, str]]:
    from matrix_core.client_api import gateway_routes as tables
    found = [("GET", "/_gateway/admin/v1/backup")]
    for prefix, router in (("/_gateway/admin/v1/", tables.GATEWAY_ADMIN_ROUTER),
                           ("/_synapse/admin/", tables.SYNAPSE_ADMIN_ROUTER),
                           ("/_gateway/v1/", tables.GATEWAY_ROUTER)):
        for route in router.routes:
            path = "/".join(route.pattern)
            if router is tables.GATEWAY_ROUTER and (route.method, path) in PUBLIC_GATEWAY_ROUTES:
                continue
            found.append((route.method, prefix + "/".join(CAPTURES.get(p, p) for p in route.pattern)))
    return found


@pytest.mark.parametrize("method,path", admin_routes())
def test_every_admin_route_refuses_non_admins(hub: dict[str, Any], method: str, path: str) -> None:
    """Every route in the admin tables (read from the tables themselves, so a new one is covered
    at once): 401 without a token, 403 M_FORBIDDEN for a signed-in non-admin."""
    body = b"{}" if method in ("POST", "PUT") else None
    status, _, data = raw(hub["gw"], method, path, body)
    assert status == 401 and json.loads(data)["errcode"] == "M_MISSING_TOKEN", (method, path, data)
    status, _, data = raw(hub["gw"], method, path, body, hub["bob"])
    assert status == 403 and json.loads(data)["errcode"] == "M_FORBIDDEN", (method, path, data)


def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    """First run with the setup code, a device with a coaps key, a password change, a revoked
    device, a deactivation, a backup: no password, access token or key is logged, and the setup
    code only in the first-run line (printed by design)."""
    gw = GatewayProcess(tmp_path / "data")
    gw.start()
    try:
        code = (gw.data_dir / "setup-code").read_text().strip()
        status, body = gw.request("POST", "/_gateway/v1/setup", {"setup_code": "WRONG-CODE-0000", "username": "root",
                                                                  "password": "first admin password"})
        assert status == 403, body
        status, headers, data = raw(gw, "POST", "/_gateway/v1/setup", json.dumps(
            {"setup_code": code, "username": "root", "password": "first admin password"}).encode())
        assert status == 200 and headers["cache-control"] == "no-store", (headers, data)  # it carries a token
        admin = json.loads(data)
        token = admin["access_token"]
        secrets_seen = ["first admin password", token]
        status, made = gw.request("PUT", "/_synapse/admin/v2/users/%40kim%3Alocalhost",
                                  {"password": "kims secret pw"}, token=token)
        assert status == 201, made
        secrets_seen.append("kims secret pw")
        status, device = gw.request("POST", "/_gateway/admin/v1/users/%40kim%3Alocalhost/devices",
                                    {"device_id": "probe1", "psk": True}, token=token)
        assert status == 200, device
        secrets_seen += [device["access_token"], device["psk"]]
        status, body = gw.request("DELETE", "/_synapse/admin/v2/users/%40kim%3Alocalhost/devices/probe1", token=token)
        assert status == 200, body
        status, body = gw.request("PUT", "/_synapse/admin/v2/users/%40kim%3Alocalhost",
                                  {"password": "kims new secret"}, token=token)
        assert status == 200, body
        secrets_seen.append("kims new secret")
        status, body = gw.request("POST", "/_synapse/admin/v1/deactivate/%40kim%3Alocalhost", {}, token=token)
        assert status == 200, body
        status, _, data = raw(gw, "GET", "/_gateway/admin/v1/backup", token=token)
        assert status == 200
    finally:
        assert gw.stop() == 0
    log = gw.log_path().read_text()
    for secret in secrets_seen:
        assert secret not in log, secret
    assert [line for line in log.splitlines() if code in line] == \
        [line for line in log.splitlines() if "First run: open" in line], log
