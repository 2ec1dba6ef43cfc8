#!/usr/bin/env python3
"""What a full disk costs in log: HTTP, CoAP and MQTT 5 writers against a hub whose data dir is a
full tmpfs, for a few seconds; prints the answers they got and the lines the hub logged.

    python bench/disk_full.py [--seconds 10]

The tmpfs lives in the hub's own mount namespace (tests/support/full_disk.py: root, or an
unprivileged user namespace). Before issue 20's D2 fix, 10 s gave ~62,000 log lines (23,000
ERROR, 1,600 tracebacks, 5.9 MB); after it, two ERROR lines: "disk full" when it fills, and at
shutdown "disk still full: N writes refused in the last 11 s" (7 lines, 1.1 KB in all).
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cbor2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from frontends.coap import wire  # noqa: E402
from tests.support import full_disk  # noqa: E402
from tests.support.gateway import GatewayProcess  # noqa: E402

PASSWORD = "disk full bench passphrase"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp) / "data")
        gw.start()
        gw.add_user("alice", PASSWORD)
        token = gw.device_token("alice", "dev")
        status, body = gw.request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "r"}, token=token)
        assert status == 200, body
        room = body["room_id"]
        gw.stop()
        config = gw.data_dir / "gateway.toml"
        config.write_text(config.read_text().replace("messages_per_second = 50.0", "messages_per_second = 0.0"))
        gw.wrapper = full_disk.wrapper(gw.data_dir, 4 << 20)
        gw.start()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench5", protocol=mqtt.MQTTv5)
        client.username_pw_set("alice", PASSWORD)
        client.connect("127.0.0.1", gw.mqtt_port)
        client.loop_start()
        client.publish("bench/a/b", b"x", qos=1).wait_for_publish(10)  # its room exists before the disk fills
        full_disk.fill(full_disk.seen_from(gw.pid, gw.data_dir))
        stop = time.monotonic() + args.seconds
        answers: dict[str, dict[str, int]] = {"http": {}, "coap": {}, "mqtt": {}}

        def count(kind: str, answer: str) -> None:
            answers[kind][answer] = answers[kind].get(answer, 0) + 1

        def http() -> None:
            i = 0
            while time.monotonic() < stop:
                status, _ = gw.request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/h{i}",
                                       {"msgtype": "m.text", "body": "x" * 500}, token)
                count("http", str(status))
                i += 1

        def coap() -> None:
            path = ["_m", "c", "a", "v1", "r", "#r:localhost", "s", "m.room.message"]
            options = [(11, p.encode()) for p in path] + [(15, f"a={token}".encode())]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                mid = 0
                while time.monotonic() < stop:
                    mid = (mid + 1) & 0xFFFF
                    sock.sendto(wire.encode(1, 2, mid, b"t", options, cbor2.dumps({"body": "x"})),
                                ("127.0.0.1", gw.coap_port))
                    try:
                        code = sock.recv(2000)[1]
                    except OSError:
                        continue
                    count("coap", f"{code >> 5}.{code & 31:02d}")

        def publish() -> None:
            codes: list[int] = []
            client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
            while time.monotonic() < stop:
                for info in [client.publish("bench/a/b", b"y" * 100, qos=1) for _ in range(50)]:
                    info.wait_for_publish(10)
            for code in codes:
                count("mqtt", f"0x{code:02X}")

        threads = [threading.Thread(target=f) for f in (http, coap, publish)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client.loop_stop()
        gw.stop()
        log = gw.log_path().read_text()
        print(f"{args.seconds:.0f} s against a full disk: answers {answers}")
        print(f"log: {len(log.splitlines())} lines, {log.count(' ERROR ')} ERROR, {log.count('Traceback')} "
              f"tracebacks, {len(log)} bytes")


if __name__ == "__main__":
    main()
