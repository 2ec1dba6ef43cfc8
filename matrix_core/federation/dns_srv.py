"""DNS SRV queries in wire format (RFC 1035 / RFC 2782): build a query, read an answer. Pure.

The standard library resolves A/AAAA but not SRV; one UDP datagram to the system's resolver
(see resolver.py) is all server discovery needs, so no DNS library is pulled in.
"""
from __future__ import annotations

import struct

from .discovery import SrvRecord

__all__ = ["DnsError", "build_srv_query", "parse_srv_response", "TYPE_SRV"]

TYPE_SRV = 33
CLASS_IN = 1


class DnsError(ValueError):
    pass


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not raw or len(raw) > 63:
            raise DnsError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out) + b"\x00"


def build_srv_query(name: str, query_id: int) -> bytes:
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # RD set, one question
    return header + _encode_name(name) + struct.pack("!HH", TYPE_SRV, CLASS_IN)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    jumped_end: int | None = None
    hops = 0
    while True:
        if offset >= len(data):
            raise DnsError("name runs past the end of the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsError("truncated compression pointer")
            if jumped_end is None:
                jumped_end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            hops += 1
            if hops > 32:
                raise DnsError("compression loop")
            continue
        if length & 0xC0:
            raise DnsError("unsupported label type")
        offset += 1
        if length == 0:
            break
        if offset + length > len(data):
            raise DnsError("label runs past the end of the message")
        labels.append(data[offset : offset + length].decode("ascii", "replace"))
        offset += length
    return ".".join(labels), (jumped_end if jumped_end is not None else offset)


def parse_srv_response(data: bytes, query_id: int) -> tuple[list[SrvRecord], int]:
    """SRV records and the smallest TTL from an answer to our query. NXDOMAIN -> ([], 0).

    Raises DnsError for a message that is not the answer to `query_id` or is malformed.
    """
    if len(data) < 12:
        raise DnsError("message shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if qid != query_id or not flags & 0x8000:
        raise DnsError("not the answer to our query")
    rcode = flags & 0x000F
    if rcode == 3:
        return [], 0
    if rcode != 0:
        raise DnsError(f"DNS error rcode {rcode}")
    if flags & 0x0200:
        raise DnsError("truncated answer")
    offset = 12
    for _ in range(qdcount):
        _, offset = _read_name(data, offset)
        offset += 4
    records: list[SrvRecord] = []
    min_ttl: int | None = None
    for _ in range(ancount):
        _, offset = _read_name(data, offset)
        if offset + 10 > len(data):
            raise DnsError("truncated resource record")
        rtype, _, ttl, rdlength = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata_end = offset + rdlength
        if rdata_end > len(data):
            raise DnsError("truncated rdata")
        if rtype == TYPE_SRV:
            if rdlength < 7:
                raise DnsError("short SRV rdata")
            priority, weight, port = struct.unpack("!HHH", data[offset : offset + 6])
            target, _ = _read_name(data, offset + 6)
            records.append(SrvRecord(priority, weight, port, target))
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
        offset = rdata_end
    return records, (min_ttl or 0)
