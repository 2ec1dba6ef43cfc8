"""Real MQTT peers for the broker tests (no tests here): a paho-mqtt 2.x client driven
synchronously through its network thread, events awaited on queues (never slept on), and the
Debian mosquitto clients."""
from __future__ import annotations

import queue
import socket
import ssl
import subprocess
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


class Paho:
    """One paho client: connect, subscribe, publish (waiting for the broker's acknowledgement),
    and a queue of received messages."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str = "",
                 protocol: int = mqtt.MQTTv311, clean: bool = True, keepalive: int = 60,
                 session_expiry: int | None = None, transport: str = "tcp", ws_path: str = "/mqtt",
                 tls_ca: str | None = None, tls_insecure: bool = False) -> None:
        self.port = port
        self.protocol = protocol
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol, "transport": transport}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.clean = clean
        self.session_expiry = session_expiry
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        if tls_ca is not None or tls_insecure:
            # tls_ca: verify the hub's certificate (and host name) against that PEM file
            self.client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_NONE if tls_insecure else ssl.CERT_REQUIRED)
            self.client.tls_insecure_set(tls_insecure)
        self.client.max_inflight_messages_set(100)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.keepalive = keepalive
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.suback_props: queue.Queue[Any] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, props: (self.suback_props.put(props),
                                                                   self.subacks.put(codes))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self._started = False

    def connect(self, properties: Properties | None = None) -> tuple[Any, Any, Any]:
        """Connect and wait for CONNACK; returns (flags, reason code, properties)."""
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                properties = properties or Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.session_expiry
            if properties is not None:
                kwargs["properties"] = properties
        self.client.connect("127.0.0.1", self.port, **kwargs)
        self.client.loop_start()
        self._started = True
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str, qos: int = 0, **options: Any) -> list[Any]:
        if self.protocol == mqtt.MQTTv5:
            props = options.pop("properties", None)
            opts = mqtt.SubscribeOptions(qos=qos, **options)
            self.client.subscribe(topic, options=opts, properties=props)
        else:
            self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(WAIT)
        return info

    def get(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def nothing_within(self, timeout: float) -> bool:
        try:
            self.messages.get(timeout=timeout)
        except queue.Empty:
            return True
        return False

    def disconnect(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False


def mosquitto_pub(port: int, user: str, password: str, topic: str, message: str | bytes, qos: int = 1,
                  *extra: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-t", topic,
            "-q", str(qos), *extra]
    data = message.encode() if isinstance(message, str) else message
    proc = subprocess.run(args + (["-s"] if data else ["-n"]), input=data, capture_output=True, timeout=20)
    if check and proc.returncode != 0:
        raise RuntimeError(f"mosquitto_pub failed {proc.returncode}: {proc.stderr!r}")
    return proc


class MosquittoSub:
    """`mosquitto_sub -v` in the background; ready once its SUBACK is in (-d debug output)."""

    def __init__(self, port: int, user: str, password: str, topic: str, count: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-t", topic,
             "-v", "-d", "-C", str(count), "-W", "20", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "received suback" in line.lower():
                break
            if "CONNACK" in line and "refused" in line.lower():
                break
        self._reader: threading.Thread | None = None

    def wait(self, timeout: float = 20) -> list[str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return [line for line in out.splitlines()
                if line and not line.startswith(("Client ", "Subscribed (mid"))]


class RawClient:
    """A plain TCP socket speaking bytes we choose (for malformed input and silent clients)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_until_closed(self, timeout: float = WAIT) -> bytes:
        self.sock.settimeout(timeout)
        chunks = []
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def recv(self, n: int = 65536, timeout: float = WAIT) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(n)

    def read_packet(self, timeout: float = WAIT) -> bytes:
        """One whole MQTT packet (fixed header included); b"" if the broker closed."""
        self.sock.settimeout(timeout)
        head = self._exactly(1)
        if not head:
            return b""
        length = 0
        shift = 0
        raw = bytearray()
        while True:
            b = self._exactly(1)
            raw += b
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if b[0] < 0x80:
                break
        return head + bytes(raw) + self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return out
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()
