"""Hubs on one LAN federate: outbound federation to private addresses is refused unless
`federation_allowed_networks` covers them. End to end, two hubs in two network namespaces joined by
a veth pair the test makes (10.x.y.0/24, traffic staying on this machine; needs root and `ip netns`),
plus unit tests of the address policy."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from matrix_core.federation.discovery import address_allowed, is_mdns_name, parse_networks
from tests.support.gateway import GatewayProcess

PW = "lan password"


@pytest.mark.parametrize("address, nets, expected", [
    ("192.168.1.20", (), False),
    ("192.168.1.20", ("192.168.1.0/24",), True),
    ("192.168.2.20", ("192.168.1.0/24",), False),
    ("10.1.2.3", ("10.0.0.0/8", "fd00::/8"), True),
    ("fd12::5", ("fd00::/8",), True),
    ("::ffff:192.168.1.9", ("192.168.1.0/24",), True),
    ("224.0.0.251", ("224.0.0.0/4",), False),  # never multicast
    ("127.0.0.1", (), False),
    ("8.8.8.8", ("192.168.1.0/24",), True),  # public addresses stay allowed
])
def test_allowed_networks(address: str, nets: tuple[str, ...], expected: bool) -> None:
    assert address_allowed(address, allowed_networks=parse_networks(nets)) is expected


def test_mdns_names() -> None:
    assert is_mdns_name("garage.local") and is_mdns_name("Garage.LOCAL.")
    assert not is_mdns_name("garage.lan") and not is_mdns_name("local")


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture()
def lan() -> Iterator[tuple[str, str, str, str]]:
    """(namespace, address here, address in the namespace, network): a veth pair between this
    namespace and a new one. Skipped where network namespaces are not permitted."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2")
    tag = f"{os.getpid() % 100000}"
    ns, here, there = f"mglan{tag}", f"mgla{tag}", f"mglb{tag}"
    octet = 16 + os.getpid() % 200
    net = f"10.213.{octet}.0/24"
    a, b = f"10.213.{octet}.1", f"10.213.{octet}.2"
    made = ip("netns", "add", ns, check=False)
    if made.returncode != 0:
        pytest.skip(f"ip netns not permitted here: {made.stderr.strip()}")
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{a}/24", "dev", here)
        ip("link", "set", here, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{b}/24", "dev", there)
        ip("netns", "exec", ns, "ip", "link", "set", there, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, a, b, net
    finally:
        ip("link", "del", here, check=False)
        ip("netns", "del", ns, check=False)


def lan_hub(data: Path, address: str, allowed: list[str], ns: str | None = None,
            port: int | None = None, mdns_name: str = "") -> GatewayProcess:
    gw = GatewayProcess(data)
    if port is not None:
        gw.federation_port = port
    if ns is not None:
        gw.wrapper = ["ip", "netns", "exec", ns]
    gw.server_name = f"{mdns_name or address}:{gw.federation_port}"
    data.mkdir(parents=True, exist_ok=True)
    nets = ", ".join(f'"{n}"' for n in allowed)
    mdns = f'mdns = true\nmdns_hostname = "{mdns_name.removesuffix(".local")}"\n' if mdns_name else ""
    (data / "gateway.toml").write_text(
        f'server_name = "{gw.server_name}"\nbind = "{address}"\nfederation_tls_verify = false\n'
        f"federation_allowed_networks = [{nets}]\nmessages_per_second = 0\nmqtt_enabled = false\n{mdns}")
    gw.start()
    gw.http_url = f"http://{address}:{gw.http_port}"
    return gw


def wait_for_body(gw: GatewayProcess, token: str, room_id: str, body: str, timeout: float = 30) -> None:
    since = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=5000" + (f"&since={q(since)}" if since else "")
        status, sync = gw.request("GET", path, token=token)
        assert status == 200, sync
        since = sync["next_batch"]
        events = sync.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
        if any(e.get("content", {}).get("body") == body for e in events):
            return
    raise AssertionError(f"{body!r} never arrived")


def test_two_hubs_on_private_addresses_federate_only_when_allowed(
        tmp_path: Path, lan: tuple[str, str, str, str]) -> None:
    ns, a_addr, b_addr, net = lan
    house = lan_hub(tmp_path / "house", a_addr, [net])
    try:
        house.add_user("alice", PW)
        alice = house.login("alice", PW)
        status, created = house.request("POST", "/_matrix/client/v3/createRoom",
                                        {"preset": "public_chat", "room_alias_name": "lan"}, token=alice)
        assert status == 200, created
        room_id = created["room_id"]
        alias = f"#lan:{house.server_name}"

        # the garage hub without federation_allowed_networks: the house hub's private address is refused
        garage = lan_hub(tmp_path / "garage", b_addr, [], ns=ns)
        port = garage.federation_port
        try:
            garage.add_user("bob", PW)
            bob = garage.login("bob", PW)
            status, body = garage.request("POST", f"/_matrix/client/v3/join/{q(alias)}", {}, token=bob)
            assert status == 404 and "refused (not a public address)" in body["error"], body
        finally:
            garage.stop()

        # allowed: bob joins the house's room and messages flow both ways
        garage = lan_hub(tmp_path / "garage", b_addr, [net], ns=ns, port=port)
        try:
            bob = garage.login("bob", PW)
            status, body = garage.request("POST", f"/_matrix/client/v3/join/{q(alias)}", {}, token=bob)
            assert status == 200, body
            assert body["room_id"] == room_id
            garage.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t1",
                           {"msgtype": "m.text", "body": "hello from the garage"}, token=bob)
            wait_for_body(house, alice, room_id, "hello from the garage")
            house.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t2",
                          {"msgtype": "m.text", "body": "hello from the house"}, token=alice)
            wait_for_body(garage, bob, room_id, "hello from the house")
        finally:
            garage.stop()
    finally:
        house.stop()
    assert ipaddress.ip_address(a_addr).is_private and ipaddress.ip_address(b_addr).is_private


def test_hubs_find_each_other_by_name_local_with_mdns(tmp_path: Path, lan: tuple[str, str, str, str]) -> None:
    """Server names NAME.local:PORT, resolved with mDNS (each hub advertises its NAME.local)."""
    ns, a_addr, b_addr, net = lan
    tag = ns.removeprefix("mglan")
    house = lan_hub(tmp_path / "house", a_addr, [net], mdns_name=f"house{tag}.local")
    try:
        house.add_user("alice", PW)
        alice = house.login("alice", PW)
        status, created = house.request("POST", "/_matrix/client/v3/createRoom",
                                        {"preset": "public_chat", "room_alias_name": "lan"}, token=alice)
        room_id = created["room_id"]
        garage = lan_hub(tmp_path / "garage", b_addr, [net], ns=ns, mdns_name=f"garage{tag}.local")
        try:
            garage.add_user("bob", PW)
            bob = garage.login("bob", PW)
            status, body = garage.request("POST", f"/_matrix/client/v3/join/{q('#lan:' + house.server_name)}", {},
                                          token=bob)
            assert status == 200, body
            garage.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t1",
                           {"msgtype": "m.text", "body": "found you by name"}, token=bob)
            wait_for_body(house, alice, room_id, "found you by name")
        finally:
            garage.stop()
    finally:
        house.stop()
