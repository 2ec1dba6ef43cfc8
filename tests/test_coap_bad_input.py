"""Bad CoAP input from a stranger (issue 20, R3): datagrams crafted by hand on a raw UDP socket
(no client library sends them). Each gets a 4.xx with a CBOR diagnostic, or, when it is not a
CoAP message at all, nothing; the hub's log gets no traceback and at most one line per kind."""
from __future__ import annotations

import socket
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
WAIT = 5.0
LOGIN = ("_m", "c", "v3", "lg")


def udp(gateway: GatewayProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", gateway.coap_port))
    return sock


def ask(sock: socket.socket, datagram: bytes) -> aiocoap.Message:
    sock.send(datagram)
    return aiocoap.Message.decode(sock.recv(65536))


def block_request(mid: int, code: Any, path: tuple[str, ...], payload: bytes = b"",
                  block1: tuple[int, bool, int] | None = None,
                  block2: tuple[int, bool, int] | None = None) -> bytes:
    msg = aiocoap.Message(code=code, uri_path=path, payload=payload)
    msg.mtype, msg.mid, msg.token = Type.CON, mid, mid.to_bytes(2, "big")
    if block1 is not None:
        msg.opt.block1 = BlockOption.BlockwiseTuple(*block1)
    if block2 is not None:
        msg.opt.block2 = BlockOption.BlockwiseTuple(*block2)
    return msg.encode()


def log_text(gateway: GatewayProcess) -> str:
    return gateway.log_path().read_text(errors="replace")


def test_non_utf8_uri_path_is_a_bad_request(gateway: GatewayProcess) -> None:
    """The 7-byte datagram of the report (CON GET, Uri-Path = C3 28), 100 times, and its NON,
    POST and Uri-Query variants: 4.00 with a CBOR diagnostic each, one log line in all."""
    before = log_text(gateway)
    with udp(gateway) as sock:
        for mid in range(100):
            # CON GET (token length 1), token 99, Uri-Path (delta 11, length 2) = C3 28
            answer = ask(sock, bytes([0x41, 0x01, mid >> 8, mid & 0xFF, 0x99, 0xB2, 0xC3, 0x28]))
            assert answer.mtype == Type.ACK and answer.mid == mid and answer.token == b"\x99"
            assert answer.code == aiocoap.BAD_REQUEST
            body = cbor2.loads(answer.payload)
            assert body["errcode"] == "M_UNRECOGNIZED" and "Uri-Path" in body["error"]
        seven = bytes([0x40, 0x01, 0x12, 0x34, 0xB2, 0xC3, 0x28])
        assert len(seven) == 7 and ask(sock, seven).code == aiocoap.BAD_REQUEST
        non = ask(sock, bytes([0x50, 0x02, 0x00, 0x07, 0xB2, 0xC3, 0x28]))  # NON POST
        assert non.mtype == Type.NON and non.code == aiocoap.BAD_REQUEST
        query = ask(sock, bytes([0x40, 0x01, 0x00, 0x08, 0xB1, 0x37, 0x42, 0xFF, 0xFE]))  # /7?<FF FE>
        assert query.code == aiocoap.BAD_REQUEST and "Uri-Query" in cbor2.loads(query.payload)["error"]
    new = log_text(gateway)[len(before):]
    assert "Traceback" not in new and "UnicodeDecodeError" not in new, new
    assert new.count("option is not UTF-8") == 1, new


def test_malformed_datagrams_log_once(gateway: GatewayProcess) -> None:
    """Not CoAP at all (reserved option delta 15): no answer (RFC 7252 §4.2 lets a server ignore
    it) and aiocoap's warning at most once for 50 of them."""
    before = log_text(gateway)
    with udp(gateway) as sock:
        for mid in range(50):
            sock.send(bytes([0x40, 0x01, 0x00, mid, 0xF2, 0xC3, 0x28]))
        # a good request after them is answered: they were read (and ignored) before it
        good = ask(sock, block_request(0x99, aiocoap.GET, ("_m", "c", "vs")))
        assert good.code == aiocoap.CONTENT and good.mid == 0x99
    new = log_text(gateway)[len(before):]
    assert "Traceback" not in new, new
    assert new.count("Ignoring unparsable message") <= 1, new


def test_blockwise_errors_are_client_errors(gateway: GatewayProcess) -> None:
    """Block1 gaps, overlaps, sizes and BERT over UDP; a Block2 block that is not there: 4.08 or
    4.00 with a CBOR diagnostic, never 5.00, and one log line a kind."""
    before = log_text(gateway)
    with udp(gateway) as sock:
        for round_ in range(20):
            mid = 1000 + 10 * round_
            first = ask(sock, block_request(mid, aiocoap.POST, LOGIN, b"a" * 64, block1=(0, True, 2)))
            assert first.code == aiocoap.CONTINUE
            gap = ask(sock, block_request(mid + 1, aiocoap.POST, LOGIN, b"a" * 64, block1=(2, True, 2)))
            assert gap.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
            assert cbor2.loads(gap.payload)["errcode"] == "M_INVALID_PARAM"
            size = ask(sock, block_request(mid + 2, aiocoap.POST, LOGIN, b"a" * 10, block1=(1, True, 2)))
            assert size.code == aiocoap.BAD_REQUEST and cbor2.loads(size.payload)["errcode"] == "M_INVALID_PARAM"
            bert = ask(sock, block_request(mid + 3, aiocoap.POST, LOGIN, b"a" * 64, block1=(0, True, 7)))
            assert bert.code == aiocoap.BAD_REQUEST
            orphan = ask(sock, block_request(mid + 4, aiocoap.POST, ("_m", "c", "v3", "x"), b"a" * 64,
                                             block1=(5, False, 2)))
            assert orphan.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
            far = ask(sock, block_request(mid + 5, aiocoap.GET, ("_m", "c", "vs"), block2=(1000, False, 0)))
            assert far.code == aiocoap.REQUEST_ENTITY_INCOMPLETE and cbor2.loads(far.payload)["error"]
    new = log_text(gateway)[len(before):]
    assert "Traceback" not in new and "5.00" not in new, new
    assert new.count("Block1 block does not follow") <= 1, new
    assert new.count("block-wise request from") <= 1, new
