"""The hub's own CoAP message layer for its commonest datagram: a device writing one reading.

Why: aiocoap turns every datagram into a Message (option objects, enum codes), deduplicates it
with a timer per message, and runs it through its token and request layers; per request that
cost more CPU than the Matrix core needs to store the event. A confirmable or non-confirmable
POST/PUT whose options are all plain (``wire.FAST_OPTIONS``: no Observe, no Block, no
No-Response, nothing unknown) needs none of that. This layer sits in aiocoap's udp6 interface,
in front of its message manager: such a datagram is parsed (``wire.parse_request``), answered
by ``ApiResource.answer`` and the answer put on the socket here; every other datagram, and every
datagram for which ``parse_request`` says no, goes to aiocoap exactly as it came.

CoAP semantics kept here (RFC 7252 §4):

- Deduplication: a request is known by (remote address, port, message id) from its arrival
  until EXCHANGE_LIFETIME after its answer. A duplicate CON whose answer is known gets the very
  same datagram again (the same event id: nothing is stored twice); one that is still being
  answered gets nothing until the empty ACK (below) has been sent, then that empty ACK again.
  Duplicate NONs are ignored. The remembered answers are bounded (``cache_size``, oldest
  first), so a flood shortens the window rather than growing the heap without limit.
- A CON is answered piggybacked in the ACK. If the answer takes longer than EMPTY_ACK_DELAY, an
  empty ACK goes out first and the answer follows as a CON separate response, sent through
  aiocoap's message manager (its message ids, retransmission, NSTART backlog and the peer's
  ACK/RST all stay aiocoap's).
- A NON is answered NON, with a message id from aiocoap's own counter.
- Requests arriving on a multicast address go to aiocoap (it knows not to answer errors there).
- A request whose string option (Uri-Path, Uri-Query, ...) is not UTF-8 is answered 4.00 Bad
  Request here, with a CBOR diagnostic and at most one log line a minute (``bad_input``):
  aiocoap's decoder would raise out of its receive callback (no answer, a traceback each).

Reaches into aiocoap's private layering (Context.request_interfaces -> TokenManager ->
MessageManager -> MessageInterfaceUDP6), like stale_refusal.py; pinned by pyproject.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import Type

from matrix_core import errors
from matrix_core.log_limit import LogLimiter

from . import codes, wire
from .content import encode_body

log = logging.getLogger(__name__)
#: one line a minute per kind of bad input, shared by every listener (issue 20, R3)
bad_input = LogLimiter(60.0)

_TUNING = TransportTuning()
EXCHANGE_LIFETIME = _TUNING.EXCHANGE_LIFETIME  # 247 s
EMPTY_ACK_DELAY = _TUNING.EMPTY_ACK_DELAY  # 0.1 s
CACHE_SIZE = 16384  # answers remembered for duplicates (each ~0.2 KB)
_V4MAPPED = b"\x00" * 10 + b"\xff\xff"
_PKTINFO = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)


def install(context: Any, resource: Any, **kwargs: Any) -> list["MessageLayer"]:
    """Put a message layer into each udp6 interface of `context`; returns them (for close())."""
    layers = []
    for token_manager in getattr(context, "request_interfaces", []):
        manager = getattr(token_manager, "token_interface", None)
        interface = getattr(manager, "message_interface", None)
        if interface is None or not hasattr(interface, "datagram_msg_received") \
                or not hasattr(manager, "_next_message_id"):
            continue
        layers.append(MessageLayer(interface, manager, resource, **kwargs))
    return layers


def _is_multicast(pktinfo: bytes | None) -> bool:
    """Whether the request's local (destination) address in an in6_pktinfo is multicast."""
    if not pktinfo:
        return False
    if pktinfo[0] == 0xFF:
        return True
    return pktinfo[:12] == _V4MAPPED and 224 <= pktinfo[12] <= 239


class _Exchange:
    """A request being answered."""

    __slots__ = ("mid", "acked", "timer", "task")

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.acked = False  # an empty ACK went out: the answer will be a separate response
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None


class MessageLayer:
    def __init__(self, interface: Any, manager: Any, resource: Any, *, cache_size: int = CACHE_SIZE,
                 lifetime: float = EXCHANGE_LIFETIME, ack_delay: float = EMPTY_ACK_DELAY) -> None:
        self.interface = interface
        self.manager = manager
        self.resource = resource
        self.cache_size = cache_size
        self.lifetime = lifetime
        self.ack_delay = ack_delay
        self.loop = asyncio.get_running_loop()
        #: (host, port, mid) -> the exchange still being answered
        self._pending: dict[tuple[Any, ...], _Exchange] = {}
        #: (host, port, mid) -> the datagram that answered it (None: a NON, ignored when repeated)
        self._answered: dict[tuple[Any, ...], bytes | None] = {}
        self._expiry: collections.deque[tuple[float, tuple[Any, ...]]] = collections.deque()
        self._aiocoap_receive = interface.datagram_msg_received
        interface.datagram_msg_received = self.datagram_msg_received
        self.handled = 0  # datagrams this layer answered itself (tests look)

    # -- receiving -----------------------------------------------------------------------

    def datagram_msg_received(self, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        request = wire.parse_request(data)
        if request is None:
            rejection = wire.bad_string_option(data)
            if rejection is None:
                self._aiocoap_receive(data, ancdata, flags, address)
            else:
                self._reject(rejection, ancdata, address)
            return
        pktinfo = None
        for level, kind, value in ancdata:
            if (level, kind) == _PKTINFO:
                pktinfo = value
        if _is_multicast(pktinfo):
            self._aiocoap_receive(data, ancdata, flags, address)
            return
        key = (address[0], address[1], request.mid)
        exchange = self._pending.get(key)
        if exchange is not None:  # a duplicate of a request being answered
            if exchange.acked and request.mtype == wire.CON:
                self._send(wire.empty(wire.ACK, request.mid), address, pktinfo)
            return
        if key in self._answered:
            answer = self._answered[key]
            if answer is not None and request.mtype == wire.CON:
                self._send(answer, address, pktinfo)
            return
        self.handled += 1
        exchange = self._pending[key] = _Exchange(request.mid)
        if request.mtype == wire.CON:
            exchange.timer = self.loop.call_later(self.ack_delay, self._ack_empty, key, address, pktinfo)
        exchange.task = self.loop.create_task(self._serve(key, exchange, request, address, pktinfo))

    def _reject(self, rejection: wire.Rejection, ancdata: Any, address: Any) -> None:
        """4.00 Bad Request with a CBOR diagnostic; nothing else is done with the request."""
        pktinfo = _pktinfo(ancdata)
        bad_input.log(log, logging.WARNING, "coap-bad-option", "CoAP: a request from %s answered 4.00: %s", address[0], rejection.reason)
        if _is_multicast(pktinfo):
            return  # RFC 7252 §8.1: no error answers to multicast requests
        if rejection.mtype == wire.CON:
            mtype, mid = wire.ACK, rejection.mid
        else:
            mtype, mid = wire.NON, self.manager._next_message_id()
        options = [(wire.CONTENT_FORMAT, wire.encode_uint(codes.CONTENT_FORMAT_CBOR))]
        self._send(wire.encode(mtype, codes.BAD_REQUEST, mid, rejection.token, options,
                               bad_request(rejection.reason)), address, pktinfo)

    def _ack_empty(self, key: tuple[Any, ...], address: Any, pktinfo: bytes | None) -> None:
        exchange = self._pending.get(key)
        if exchange is None:
            return
        exchange.acked = True
        exchange.timer = None
        self._send(wire.empty(wire.ACK, exchange.mid), address, pktinfo)

    # -- answering -----------------------------------------------------------------------

    async def _serve(self, key: tuple[Any, ...], exchange: _Exchange, request: wire.Request, address: Any,
                     pktinfo: bytes | None) -> None:
        try:
            answer = await self.resource.answer(request.code, request.uri_path, request.uri_query,
                                                request.access_token, request.accept,
                                                request.content_format, request.payload,
                                                client=str(address[0]))
            code, payload, options = answer.code, answer.payload, _options(answer)
        except Exception:  # answer() maps every error itself; this is the last resort
            log.exception("CoAP message layer: answering a request failed")
            code, payload, options = Code.INTERNAL_SERVER_ERROR.value, b"", []
        finally:
            del self._pending[key]
            if exchange.timer is not None:
                exchange.timer.cancel()
        if request.mtype == wire.NON:
            self._remember(key, None)
            self._send(wire.encode(wire.NON, code, self.manager._next_message_id(), request.token, options,
                                   payload), address, pktinfo)
        elif not exchange.acked:
            datagram = wire.encode(wire.ACK, code, request.mid, request.token, options, payload)
            self._remember(key, datagram)
            self._send(datagram, address, pktinfo)
        else:
            self._remember(key, wire.empty(wire.ACK, request.mid))
            self._send_separate(code, payload, options, request.token, address, pktinfo)

    def _send_separate(self, code: int, payload: bytes, options: list[tuple[int, bytes]], token: bytes,
                       address: Any, pktinfo: bytes | None) -> None:
        """A CON response after an empty ACK, through aiocoap (retransmitted until ACKed)."""
        from aiocoap.transports.udp6 import UDP6EndpointAddress

        message = aiocoap.Message(mtype=Type.CON, code=Code(code), payload=payload, token=token)
        for number, value in options:
            message.opt.add_option(aiocoap.optiontypes.UintOption(number, int.from_bytes(value, "big")))
        message.remote = UDP6EndpointAddress(address, self.interface, pktinfo=pktinfo)
        try:
            self.manager.send_message(message, lambda: None)
        except Exception:
            log.exception("CoAP message layer: sending a separate response failed")

    def _remember(self, key: tuple[Any, ...], datagram: bytes | None) -> None:
        now = self.loop.time()
        answered, expiry = self._answered, self._expiry
        while expiry and (expiry[0][0] <= now or len(expiry) >= self.cache_size):
            answered.pop(expiry.popleft()[1], None)
        answered[key] = datagram
        expiry.append((now + self.lifetime, key))

    def _send(self, datagram: bytes, address: Any, pktinfo: bytes | None) -> None:
        try:
            sock = self.interface.transport.get_extra_info("socket")
        except AttributeError:  # shut down
            return
        ancdata = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)] if pktinfo else []
        for _ in range(2):
            try:
                sock.sendmsg((datagram,), ancdata, 0, address)
                return
            except OSError as exc:
                # ECONNREFUSED here is another peer's ICMP refusal reported on this send
                # (see stale_refusal.py): never this datagram's fate, so send it again.
                if exc.errno != errno.ECONNREFUSED:
                    log.debug("CoAP message layer: sending to %r failed: %s", address, exc)
                    return

    async def close(self) -> None:
        """Stop answering: cancel the empty-ACK timers and let running answers finish."""
        tasks = []
        for exchange in self._pending.values():
            if exchange.timer is not None:
                exchange.timer.cancel()
            if exchange.task is not None:
                tasks.append(exchange.task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if getattr(self.interface, "datagram_msg_received", None) == self.datagram_msg_received:
            self.interface.datagram_msg_received = self._aiocoap_receive

    def remembered(self) -> int:
        return len(self._answered)


def _pktinfo(ancdata: Any) -> bytes | None:
    pktinfo = None
    for level, kind, value in ancdata:
        if (level, kind) == _PKTINFO:
            pktinfo = value
    return pktinfo


def bad_request(reason: str) -> bytes:
    """The CBOR diagnostic of a 4.00 for a request that cannot be read."""
    err = errors.MatrixError(400, "M_UNRECOGNIZED", f"Bad request: {reason}")
    return encode_body(err.to_json(), codes.CONTENT_FORMAT_CBOR)


def _options(answer: Any) -> list[tuple[int, bytes]]:
    options = [(wire.CONTENT_FORMAT, wire.encode_uint(answer.content_format))]
    if answer.max_age is not None:
        options.append((wire.MAX_AGE, wire.encode_uint(answer.max_age)))
    if answer.size1 is not None:
        options.append((wire.SIZE1, wire.encode_uint(answer.size1)))
    return options
