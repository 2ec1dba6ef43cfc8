"""A MicroPython sensor that posts CBOR readings into a Matrix room over CoAP.

Runs unchanged on an ESP32 / Pico W (MicroPython) and under CPython (the tests drive it against a
live hub). Everything that touches hardware or time is injected, so the protocol logic is the same
code in both places:

* ``sock_factory()`` returns a fresh UDP socket (``socket.socket(AF_INET, SOCK_DGRAM)``);
* ``clock`` has MicroPython's ``time`` API (``ticks_ms``, ``ticks_diff``, ``sleep_ms``): on the
  device pass the ``time`` module itself;
* ``read_sensor()`` returns the reading, a dict of floats/ints/strings.

MicroPython ships no CBOR and no CoAP client, so both are hand-written here, as small as they can be
while staying correct: confirmable requests retransmitted with exponential back-off (RFC 7252
4.2), empty ACK + separate response handled, floats encoded as single precision when that is exact
(what an ESP32's single-precision floats always are) and as doubles otherwise.

Only builtin names appear in annotations (MicroPython ignores annotations but has no ``typing``).
"""
import struct

try:
    from os import urandom
except ImportError:  # pragma: no cover - very old MicroPython ports
    from uos import urandom

# --- CBOR (RFC 8949): just what a reading needs -------------------------------------------------


def _head(major: int, n: int) -> bytes:
    """The initial byte(s) of an item: major type plus the shortest length/value encoding."""
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25]) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes([major << 5 | 26]) + struct.pack(">I", n)
    if n < 0x10000000000000000:
        return bytes([major << 5 | 27]) + struct.pack(">Q", n)
    raise ValueError("integer too large for CBOR without bignums")


def _float(value: float) -> bytes:
    """Single precision when it holds the value exactly, else double: the hub keeps the value,
    and a 21.5 costs 5 bytes instead of 9. NaN is the canonical half-precision NaN."""
    if value != value:
        return b"\xf9\x7e\x00"
    try:
        single = struct.pack(">f", value)
        if struct.unpack(">f", single)[0] == value:
            return b"\xfa" + single
    except OverflowError:  # CPython refuses to narrow 1e300
        pass
    return b"\xfb" + struct.pack(">d", value)


def cbor_encode(value) -> bytes:
    """Encode None, bool, int, float, str, bytes, list/tuple and dict (any of these as keys)."""
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return _head(3, len(data)) + data
    if isinstance(value, (bytes, bytearray)):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, (list, tuple)):
        return _head(4, len(value)) + b"".join(cbor_encode(v) for v in value)
    if isinstance(value, dict):
        return _head(5, len(value)) + b"".join(cbor_encode(k) + cbor_encode(v) for k, v in value.items())
    raise TypeError("cannot encode %r as CBOR" % (value,))


def _half(bits: int) -> float:
    """IEEE 754 half precision to float (struct's 'e' is missing on MicroPython)."""
    exp = (bits >> 10) & 0x1F
    frac = bits & 0x3FF
    if exp == 0:
        val = frac * 2.0 ** -24
    elif exp == 31:
        val = float("inf") if frac == 0 else float("nan")
    else:
        val = (1 + frac / 1024) * 2.0 ** (exp - 15)
    return -val if bits & 0x8000 else val


def cbor_decode(data: bytes):
    """Decode one definite-length item (the hub's answers: maps, strings, ints, floats)."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after CBOR item")
    return value


def _decode(data: bytes, pos: int):
    ib = data[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info in (22, 23):
            return None, pos
        if info == 25:
            return _half(struct.unpack(">H", data[pos:pos + 2])[0]), pos + 2
        if info == 26:
            return struct.unpack(">f", data[pos:pos + 4])[0], pos + 4
        if info == 27:
            return struct.unpack(">d", data[pos:pos + 8])[0], pos + 8
        raise ValueError("unsupported simple value")
    if info < 24:
        n = info
    elif info < 28:
        size = 1 << (info - 24)
        n = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        raise ValueError("indefinite lengths are not supported")
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major == 2:
        return bytes(data[pos:pos + n]), pos + n
    if major == 3:
        return str(data[pos:pos + n], "utf-8"), pos + n
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos
    if major == 5:
        out = {}
        for _ in range(n):
            key, pos = _decode(data, pos)
            out[key], pos = _decode(data, pos)
        return out, pos
    item, pos = _decode(data, pos)  # major 6: a tag; keep the content
    return item, pos


# --- CoAP (RFC 7252) over one UDP socket --------------------------------------------------------

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT = 1, 2, 3
URI_PATH, CONTENT_FORMAT, URI_QUERY = 11, 12, 15
ACCESS_TOKEN = 256  # MSC3079's access token option
CBOR = 60
ACK_TIMEOUT = 2.0  # seconds, RFC 7252 defaults
MAX_RETRANSMIT = 4


class CoapError(Exception):
    """No usable answer: timed out after every retransmission, or the hub reset the exchange."""


def code_str(code: int) -> str:
    """0x44 -> '2.04', the notation the docs and coap-client print."""
    return "%d.%02d" % (code >> 5, code & 31)


def _option_nibble(n: int) -> tuple:
    """Option delta/length: nibble plus extended bytes (13: one byte, 14: two bytes)."""
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, struct.pack(">H", n - 269)


def encode_message(mtype: int, code: int, mid: int, token: bytes, options: list, payload: bytes = b"") -> bytes:
    """One CoAP message; options are (number, bytes) pairs, sorted here (stable for repeats)."""
    out = bytearray([0x40 | mtype << 4 | len(token), code]) + struct.pack(">H", mid) + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, dext = _option_nibble(number - last)
        length, lext = _option_nibble(len(value))
        out += bytes([delta << 4 | length]) + dext + lext + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def decode_message(data: bytes) -> tuple:
    """(type, code, mid, token, options, payload); raises ValueError on garbage."""
    if len(data) < 4 or data[0] >> 6 != 1:
        raise ValueError("not a CoAP 1 message")
    mtype, tkl = (data[0] >> 4) & 3, data[0] & 15
    code, mid = data[1], struct.unpack(">H", data[2:4])[0]
    token, pos, number, options = bytes(data[4:4 + tkl]), 4 + tkl, 0, []
    while pos < len(data) and data[pos] != 0xFF:
        delta, length = data[pos] >> 4, data[pos] & 15
        pos += 1
        vals = []
        for nib in (delta, length):
            if nib == 13:
                vals.append(data[pos] + 13)
                pos += 1
            elif nib == 14:
                vals.append(struct.unpack(">H", data[pos:pos + 2])[0] + 269)
                pos += 2
            elif nib == 15:
                raise ValueError("reserved option nibble")
            else:
                vals.append(nib)
        number += vals[0]
        options.append((number, bytes(data[pos:pos + vals[1]])))
        pos += vals[1]
    payload = bytes(data[pos + 1:]) if pos < len(data) else b""
    return mtype, code, mid, token, options, payload


def _uint(n: int) -> bytes:
    """A CoAP uint option value: big-endian, no leading zero bytes."""
    out = b""
    while n:
        out = bytes([n & 0xFF]) + out
        n >>= 8
    return out


class CoapClient:
    """Confirmable requests to one server over one UDP socket, retransmitted until answered."""

    def __init__(self, sock, server: tuple, clock, ack_timeout: float = ACK_TIMEOUT,
                 max_retransmit: int = MAX_RETRANSMIT) -> None:
        self.sock, self.server, self.clock = sock, server, clock
        self.ack_timeout, self.max_retransmit = ack_timeout, max_retransmit
        self.mid = int.from_bytes(urandom(2), "big")
        self.retransmissions = 0  # counted for the curious (and the tests)

    def request(self, code: int, path: list, query: list = (), payload: bytes = b"",
                content_format: int = None, token_option: str = None) -> tuple:
        """Send one CON request and return (response code, payload).

        RFC 7252 4.2: wait ACK_TIMEOUT (times a random factor up to 1.5), then resend the same
        message (same message id, so the server answers a duplicate instead of acting twice),
        doubling the wait, at most MAX_RETRANSMIT times. An empty ACK means "answer follows":
        then keep waiting for a response carrying our token and ACK it if it is confirmable.
        """
        self.mid = (self.mid + 1) & 0xFFFF
        token = urandom(4)
        options = [(URI_PATH, seg.encode()) for seg in path]
        options += [(URI_QUERY, q.encode()) for q in query]
        if content_format is not None:
            options.append((CONTENT_FORMAT, _uint(content_format)))
        if token_option is not None:
            options.append((ACCESS_TOKEN, token_option.encode()))
        message = encode_message(CON, code, self.mid, token, options, payload)
        timeout_ms = int(self.ack_timeout * 1000 * (1 + urandom(1)[0] / 510))
        acked = False
        for attempt in range(self.max_retransmit + 1):
            if not acked:
                if attempt:
                    self.retransmissions += 1
                self.sock.sendto(message, self.server)
            answer = self._wait(token, timeout_ms, acked)
            if answer is True:
                acked = True  # empty ACK: stop resending, wait for the separate response
            elif answer is not None:
                return answer
            timeout_ms *= 2
        raise CoapError("no answer from %r" % (self.server,))  # a tuple, or bytes on some ports

    def _wait(self, token: bytes, timeout_ms: int, acked: bool):
        """Read datagrams until timeout: a response tuple, True for an empty ACK, None on timeout."""
        start = self.clock.ticks_ms()
        while True:
            left = timeout_ms - self.clock.ticks_diff(self.clock.ticks_ms(), start)
            if left <= 0:
                return None
            self.sock.settimeout(left / 1000)
            try:
                data, _ = self.sock.recvfrom(1280)
            except OSError:  # timeout (socket.timeout is an OSError in CPython too)
                return None
            try:
                mtype, code, mid, rtoken, _, payload = decode_message(data)
            except (ValueError, IndexError):
                continue
            if mtype == RST and mid == self.mid:
                raise CoapError("reset by server")
            if mtype == ACK and mid == self.mid and code == 0:
                if not acked:
                    return True
                continue
            if rtoken != token or code == 0:
                continue  # a late answer to an earlier request, or a ping
            if mtype == CON:  # separate response: acknowledge it
                self.sock.sendto(encode_message(ACK, 0, mid, b"", []), self.server)
            return code, payload


# --- the Matrix part --------------------------------------------------------------------------


def send_path(room: str, event_type: str, msc3079: bool = False, txn: str = "") -> list:
    """Uri-Path segments: the seed's short path (POST) or MSC3079's /9 send (PUT with a txn id).
    Options carry raw text, so the alias keeps its '#' (no percent-encoding on the wire)."""
    if msc3079:
        return ["9", room, event_type, txn]
    return ["_m", "c", "a", "v1", "r", room, "s", event_type]


def uri_length(path: list, query: list) -> int:
    """Length of the same request written as a URI path+query (what coap-client limits to ~100)."""
    text = "/" + "/".join(seg.replace("#", "%23") for seg in path)
    return len(text) + (len("?" + "&".join(query)) if query else 0)


class Sensor:
    """Posts readings as events of `event_type` into `room` (an alias like '#kitchen:hub')."""

    def __init__(self, client: CoapClient, room: str, token: str, event_type: str = "org.example.reading",
                 msc3079: bool = False) -> None:
        self.client, self.room, self.token = client, room, token
        self.event_type, self.msc3079 = event_type, msc3079
        # MSC3079 sends are PUTs with a transaction id: unique per boot, so a reboot never
        # collides with an earlier id, and a retry of the same reading is stored once.
        self.txn_prefix = "".join("%02x" % b for b in urandom(4))
        self.count = 0

    def post(self, reading) -> str:
        """Send one reading; returns its event id, raises CoapError on a refusal or no answer."""
        self.count += 1
        txn = "%s.%d" % (self.txn_prefix, self.count)
        path = send_path(self.room, self.event_type, self.msc3079, txn)
        if self.msc3079:
            code, payload = self.client.request(PUT, path, payload=cbor_encode(reading),
                                                content_format=CBOR, token_option=self.token)
        else:
            code, payload = self.client.request(POST, path, ["a=" + self.token], cbor_encode(reading),
                                                content_format=CBOR)
        try:
            answer = cbor_decode(payload) if payload else {}
        except (ValueError, IndexError):
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        if code >> 5 != 2:
            raise CoapError("%s %s" % (code_str(code), answer.get("errcode", "")))
        if "event_id" not in answer:
            raise CoapError("%s without an event id" % code_str(code))
        return answer["event_id"]


def run(sock_factory, clock, read_sensor, server: tuple, room: str, token: str,
        event_type: str = "org.example.reading", period_ms: int = 60000, count: int = None,
        msc3079: bool = False, ack_timeout: float = ACK_TIMEOUT, log=print) -> list:
    """The device's main loop: read, post, sleep; `count` readings (None: forever).

    A failed post is logged and the loop goes on (the next reading is worth more than a retry of
    an old one). Returns the event ids posted, which is what the tests look for in the room.
    """
    sock = sock_factory()
    sensor = Sensor(CoapClient(sock, server, clock, ack_timeout), room, token, event_type, msc3079)
    posted = []
    try:
        n = 0
        while count is None or n < count:
            n += 1
            try:
                reading = read_sensor()
                posted.append(sensor.post(reading))
                log("posted", reading, posted[-1])
            except (CoapError, OSError) as err:
                log("post failed:", err)
            if count is None or n < count:
                clock.sleep_ms(period_ms)
    finally:
        sock.close()
    return posted
