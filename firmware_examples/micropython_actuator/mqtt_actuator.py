"""A MicroPython actuator: subscribes to a room's MQTT topic and acts on commands sent from Matrix.

A message typed in Element (or sent with curl) into the room bound to `home/lamp/#` reaches the
hub's broker as a PUBLISH on the room's topic `home/lamp` with the JSON payload
``{"content": {"msgtype": "m.text", "body": "on"}, "event_id": ..., "sender": ..., ...}``; a plain
MQTT publish of ``on`` to `home/lamp` arrives as those two bytes. Both become the command "on".

The MQTT 3.1.1 client is hand-written in the API style of umqtt.simple (connect, set_callback,
subscribe, publish, wait_msg, check_msg, ping, disconnect) so that this file runs both on a board
and under CPython in the tests; the socket comes from an injected ``sock_factory(host, port)``
and time from ``clock`` (MicroPython's ``time`` API: ticks_ms, ticks_diff, sleep_ms).
"""
import json
import struct


class MQTTException(Exception):
    """The broker refused the connection (CONNACK return code) or broke the protocol."""


class MQTTClient:
    """MQTT 3.1.1, QoS 0 and 1, one socket, no threads: what an ESP32 can afford."""

    def __init__(self, client_id: str, server: str, port: int = 1883, user: str = None,
                 password: str = None, keepalive: int = 0, sock_factory=None) -> None:
        self.client_id, self.server, self.port = client_id, server, port
        self.user, self.pswd, self.keepalive = user, password, keepalive
        self.sock_factory = sock_factory
        self.sock = None
        self.cb = None
        self.pid = 0
        self._last_pid, self._last_body = 0, b""  # the latest PUBACK/SUBACK, for publish/subscribe

    # -- bytes on the wire
    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.sock.send(view)
            view = view[sent:]

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise MQTTException("connection closed by the broker")
            buf += chunk
        return buf

    @staticmethod
    def _str(text) -> bytes:
        data = text.encode() if isinstance(text, str) else bytes(text)
        return struct.pack(">H", len(data)) + data

    @staticmethod
    def _varlen(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _packet(self, first: int, body: bytes) -> None:
        self._write(bytes([first]) + self._varlen(len(body)) + body)

    def _read_packet(self, first: int = None) -> tuple:
        """(first byte, body) of the next packet; blocks per the socket's timeout."""
        if first is None:
            first = self._read(1)[0]
        n, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read(n) if n else b""

    # -- umqtt.simple's API
    def set_callback(self, f) -> None:
        """f(topic: bytes, msg: bytes), called for every PUBLISH received."""
        self.cb = f

    def connect(self, clean_session: bool = True) -> bool:
        """Open the socket, CONNECT, wait for CONNACK; returns the session-present flag."""
        self.sock = self.sock_factory(self.server, self.port)
        flags = 0x02 if clean_session else 0
        payload = self._str(self.client_id)
        if self.user is not None:
            flags |= 0x80
            payload += self._str(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += self._str(self.pswd)
        self._packet(0x10, self._str("MQTT") + bytes([4, flags]) + struct.pack(">H", self.keepalive) + payload)
        first, body = self._read_packet()
        if first != 0x20 or len(body) != 2:
            raise MQTTException("expected CONNACK")
        if body[1] != 0:
            raise MQTTException(body[1])  # 4: bad user name or password, 5: not authorized
        return bool(body[0] & 1)

    def disconnect(self) -> None:
        try:
            self._write(b"\xe0\x00")
        finally:
            self.sock.close()

    def ping(self) -> None:
        self._write(b"\xc0\x00")

    def _next_pid(self) -> int:
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    def publish(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        """QoS 0 or 1; QoS 1 returns once the broker's PUBACK is in (the hub sends it after commit)."""
        body = self._str(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            body += struct.pack(">H", pid)
        self._packet(0x30 | qos << 1 | retain, body + msg)
        while qos:
            op = self.wait_msg()
            if op == 0x40 and self._last_pid == pid:
                return

    def subscribe(self, topic: str, qos: int = 0) -> None:
        """SUBSCRIBE one filter and wait for its SUBACK (granted QoS 0x80 = refused)."""
        pid = self._next_pid()
        self._packet(0x82, struct.pack(">H", pid) + self._str(topic) + bytes([qos]))
        while True:
            op = self.wait_msg()
            if op == 0x90 and self._last_pid == pid:
                if self._last_body[2] == 0x80:
                    raise MQTTException("subscription refused")
                return

    def wait_msg(self):
        """Block for one packet and handle it; returns its type (0x30 PUBLISH, 0x40 PUBACK, ...)."""
        return self._handle(*self._read_packet())

    def check_msg(self, timeout: float = 0):
        """Handle one packet if one arrives within `timeout` seconds, else return None.
        Only the wait for the first byte is bounded: a packet once started is read whole."""
        self.sock.settimeout(timeout)
        try:
            first = self._read(1)[0]
        except OSError as err:
            if not is_timeout(err):
                raise
            return None
        finally:
            self.sock.settimeout(None)
        return self._handle(*self._read_packet(first))

    def _handle(self, first: int, body: bytes):
        """A PUBLISH goes to the callback and is PUBACKed after it ran (a command whose handler
        crashed is redelivered); PUBACK/SUBACK ids are noted for publish() and subscribe()."""
        op = first & 0xF0
        if op == 0x30:
            qos = (first >> 1) & 3
            tlen = struct.unpack(">H", body[:2])[0]
            topic, pos = body[2:2 + tlen], 2 + tlen
            pid = 0
            if qos:
                pid = struct.unpack(">H", body[pos:pos + 2])[0]
                pos += 2
            if qos == 2:
                raise MQTTException("QoS 2 is not supported; subscribe with QoS 0 or 1")
            self.cb(topic, body[pos:])
            if qos == 1:
                self._write(b"\x40\x02" + struct.pack(">H", pid))
        elif op in (0x40, 0x90):
            self._last_pid = struct.unpack(">H", body[:2])[0]
            self._last_body = body
        return op


def is_timeout(err: OSError) -> bool:
    """A read that merely timed out: CPython's socket.timeout / BlockingIOError, MicroPython's
    OSError(EAGAIN or ETIMEDOUT; lwIP numbers ETIMEDOUT 116)."""
    return getattr(err, "errno", None) in (None, 11, 110, 116)


# --- the actuator ------------------------------------------------------------------------------

COMMANDS = ("on", "off", "toggle")


def parse_command(msg: bytes):
    """The command in a message: the body of a Matrix event as the hub publishes it, or a raw
    MQTT payload. None for anything else (a chat line, a reading), which is ignored."""
    try:
        text = msg.decode()
    except UnicodeError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        content = doc.get("content")
        text = content.get("body", "") if isinstance(content, dict) else ""
        if not isinstance(text, str):
            return None
    text = text.strip().lower()
    return text if text in COMMANDS else None


def run(sock_factory, clock, act, server: str, port: int, user: str, password: str, topic: str,
        client_id: str, state_topic: str = None, keepalive: int = 60, poll_ms: int = 1000,
        on_ready=None, should_stop=None, log=print) -> int:
    """Connect, subscribe to `topic` (QoS 1), call ``act(command)`` for every command received.

    ``act`` returns the new state (e.g. "on"); with `state_topic` it is published there (QoS 1), so
    the room shows what the device did. Pings keep the connection alive; a lost connection is
    reopened after a back-off. ``on_ready()`` runs after each SUBACK, ``should_stop()`` is polled
    every `poll_ms`. Returns the number of commands acted on.
    """
    acted = [0]
    client = MQTTClient(client_id, server, port, user, password, keepalive, sock_factory)

    def on_message(msg_topic: bytes, msg: bytes) -> None:
        command = parse_command(msg)
        if command is None:
            return
        state = act(command)
        acted[0] += 1
        log("command", command, "->", state)
        if state_topic and state is not None:
            pending.append(state)

    client.set_callback(on_message)
    pending = []
    backoff_ms = 500
    while not (should_stop and should_stop()):
        try:
            client.connect()
            client.subscribe(topic, 1)
            backoff_ms = 500
            if on_ready:
                on_ready()
            last_sent = clock.ticks_ms()  # keepalive counts what the client sends
            while not (should_stop and should_stop()):
                client.check_msg(poll_ms / 1000)
                while pending:
                    client.publish(state_topic, pending.pop(0).encode(), qos=1)
                    last_sent = clock.ticks_ms()
                if keepalive and clock.ticks_diff(clock.ticks_ms(), last_sent) > keepalive * 500:
                    client.ping()
                    last_sent = clock.ticks_ms()
            client.disconnect()
        except (OSError, MQTTException) as err:
            log("mqtt:", err, "- reconnecting")
            if client.sock:
                client.sock.close()
            clock.sleep_ms(backoff_ms)
            backoff_ms = min(backoff_ms * 2, 60000)
    return acted[0]
