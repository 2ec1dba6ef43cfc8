"""mDNS/DNS-SD: the hub advertises itself; found by browsing with python-zeroconf on loopback."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.ops.discovery import adverts
from tests.support.gateway import GatewayProcess, gateway_cli


def test_adverts_follow_the_running_front_ends() -> None:
    config = GatewayConfig(server_name="hub.example", mdns=True, mdns_hostname="hub", coap_port=5683, mqtt_port=1883)
    only_http = adverts(config, 8008, [])
    assert [(a.instance, a.port) for a in only_http] == [("hub._http._tcp.local.", 8008)]
    assert only_http[0].txt == {"server_name": "hub.example", "path": "/_matrix/client"}
    full = adverts(config, 8008, ["coap", "mqtt"])
    assert [(a.service_type, a.port) for a in full] == [
        ("_http._tcp.local.", 8008), ("_coap._udp.local.", 5683), ("_mqtt._tcp.local.", 1883)]


def test_bad_mdns_hostname_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text('mdns = true\nmdns_hostname = "hub.local"\n')
    proc = gateway_cli("run", "--data-dir", str(data), check=False)
    assert proc.returncode != 0 and "mdns_hostname" in proc.stderr


async def test_hub_is_found_on_the_lan(tmp_path: Path) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    label = f"hubtest{os.getpid()}"
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(f'mdns = true\nmdns_hostname = "{label}"\nserver_name = "hub.test"\n')
    gw = GatewayProcess(data, server_name="hub.test")
    gw.start()
    browser = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        info = AsyncServiceInfo("_http._tcp.local.", f"{label}._http._tcp.local.")
        # the hub probes for about a second after it is ready; the request waits for its answer
        assert await info.async_request(browser.zeroconf, 10_000), gw.read_log()
        assert info.port == gw.http_port and info.server == f"{label}.local."
        assert info.parsed_addresses() == ["127.0.0.1"]
        assert info.properties[b"server_name"] == b"hub.test"
        assert socket.create_connection(("127.0.0.1", info.port), timeout=5)  # it really is the hub
        if any("coap=" in line for line in gw.stdout_lines):  # the CoAP front end runs: advertised too
            coap = AsyncServiceInfo("_coap._udp.local.", f"{label}._coap._udp.local.")
            assert await coap.async_request(browser.zeroconf, 10_000)
            assert coap.port == gw.coap_port
    finally:
        await browser.async_close()
        code = gw.stop()
    assert code == 0, gw.read_log()
    assert "mDNS advertising failed" not in gw.read_log()
