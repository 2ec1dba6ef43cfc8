"""Pure federation transport logic, no sockets: X-Matrix, server discovery, SRV wire format, key
documents and their validity rules, the outbound address policy."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix_core.federation.client import encode_query, federation_path
from matrix_core.federation.discovery import (
    Lookups, NeedSrv, NeedWellKnown, SrvRecord, Target, address_allowed, decide, parse_server_name,
    parse_well_known, well_known_cache_seconds,
)
from matrix_core.federation.dns_srv import DnsError, build_srv_query, parse_srv_response
from matrix_core.federation.keys import (
    DAY_MS, MAX_KEY_VALIDITY_MS, KeyDocumentError, ServerKey, check_key_document, check_notary_signature,
    key_valid_at, notary_sign, own_key_document, parse_key_query,
)
from matrix_core.federation.xmatrix import (
    XMatrixAuth, XMatrixError, build_authorization, format_header, parse_header, verify_request,
)
from matrix_core.signing import decode_base64, generate_signing_key, sign_json, signing_key_from_seed

KEY = signing_key_from_seed(b"\x01" * 32, "ed25519:k1")
OTHER = signing_key_from_seed(b"\x02" * 32, "ed25519:k1")

# -- X-Matrix ---------------------------------------------------------------------------------

# Captured from Synapse 1.163 (GET /_matrix/client/v3/profile/@bob:localhost:34679 on Synapse made
# it ask our listener): its parameter order, its percent-encoding of the query, its signature.
SYNAPSE_HEADER = ('X-Matrix origin="localhost:42275",key="ed25519:a_IwXN",sig="hRTavPq5rEJ4HDzd4YJ1U1hqCAy/NQdFVBX'
                  'wneIirnj87wNH0RgtfHqx5mzhBRbVkkCn8sQiLAsD5PeHO/S3Aw",destination="localhost:34679"')
SYNAPSE_URI = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Alocalhost%3A34679"
SYNAPSE_VERIFY_KEY = decode_base64("aQ589yBJZbe5pAJd0gUKFZ9egBGdHzBjOyydoePgio4")


def test_synapse_header_parses_and_verifies_against_the_raw_uri() -> None:
    auth = parse_header(SYNAPSE_HEADER)
    assert auth == XMatrixAuth("localhost:42275", "localhost:34679", "ed25519:a_IwXN", auth.signature)
    verify_request(auth, "GET", SYNAPSE_URI, "localhost:34679", SYNAPSE_VERIFY_KEY)
    # The decoded form of the same URI (what a re-encoding HTTP stack would hand over) fails.
    with pytest.raises(XMatrixError):
        verify_request(auth, "GET", "/_matrix/federation/v1/query/profile?user_id=@bob:localhost:34679",
                       "localhost:34679", SYNAPSE_VERIFY_KEY)
    with pytest.raises(XMatrixError, match="addressed"):
        verify_request(auth, "GET", SYNAPSE_URI, "localhost:1", SYNAPSE_VERIFY_KEY)
    with pytest.raises(XMatrixError):
        verify_request(auth, "POST", SYNAPSE_URI, "localhost:34679", SYNAPSE_VERIFY_KEY)


def test_round_trip_with_and_without_content() -> None:
    for content in (None, {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"n": 1}}]}):
        header = build_authorization("PUT", "/_matrix/federation/v1/send/t%2F1", "a.example", "b.example", KEY,
                                     content)
        auth = parse_header(header)
        assert (auth.origin, auth.destination, auth.key_id) == ("a.example", "b.example", "ed25519:k1")
        verify_request(auth, "PUT", "/_matrix/federation/v1/send/t%2F1", "b.example", KEY.verify_key_bytes, content)
        with pytest.raises(XMatrixError):
            verify_request(auth, "PUT", "/_matrix/federation/v1/send/t%2F1", "b.example", OTHER.verify_key_bytes,
                           content)
        with pytest.raises(XMatrixError):
            verify_request(auth, "PUT", "/_matrix/federation/v1/send/t%2F1", "b.example", KEY.verify_key_bytes,
                           {"other": True})


def test_tampered_signature_fails() -> None:
    auth = parse_header(build_authorization("GET", "/x", "a", "b", KEY))
    raw = bytearray(decode_base64(auth.signature))
    raw[0] ^= 1
    from matrix_core.signing import encode_base64
    bad = XMatrixAuth(auth.origin, auth.destination, auth.key_id, encode_base64(bytes(raw)))
    with pytest.raises(XMatrixError):
        verify_request(bad, "GET", "/x", "b", KEY.verify_key_bytes)
    with pytest.raises(XMatrixError):
        verify_request(XMatrixAuth("a", "b", "ed25519:k1", "not base64!"), "GET", "/x", "b", KEY.verify_key_bytes)


def test_missing_destination_is_refused() -> None:
    auth = parse_header('X-Matrix origin=a,key="ed25519:k1",sig="abc"')
    assert auth.destination is None
    with pytest.raises(XMatrixError, match="destination"):
        verify_request(auth, "GET", "/x", "b", KEY.verify_key_bytes)


@pytest.mark.parametrize("header", [
    'X-Matrix origin="o.example",destination="d.example",key="ed25519:k1",sig="c2ln"',
    'X-Matrix sig="c2ln",key="ed25519:k1",destination="d.example",origin="o.example"',
    'x-matrix ORIGIN=o.example, Destination=d.example ,key=ed25519:k1,sig=c2ln',
    'X-Matrix  origin = "o.example" ,,destination="d.example",key="ed25519:k1",sig="c2ln",',
    'X-Matrix origin="o.\\example",destination="d.example",key="ed25519:k1",sig="c2ln"',
])
def test_parse_accepts_any_order_quoting_and_spacing(header: str) -> None:
    assert parse_header(header) == XMatrixAuth("o.example", "d.example", "ed25519:k1", "c2ln")


@pytest.mark.parametrize("header", [
    "Bearer abc",
    'X-Matrix origin="o",key="ed25519:k1"',                      # no sig
    'X-Matrix origin="o",key="ed25519:k1",sig="unterminated',
    'X-Matrix origin="o",origin="p",key="ed25519:k1",sig="s"',   # twice
    'X-Matrix origin,key="ed25519:k1",sig="s"',
    'X-Matrix origin="o" key="ed25519:k1",sig="s"',              # missing comma
])
def test_parse_refuses_malformed_headers(header: str) -> None:
    with pytest.raises(XMatrixError):
        parse_header(header)


@given(origin=st.from_regex(r"[a-z0-9.\-]{1,30}(:[0-9]{1,5})?", fullmatch=True),
       destination=st.from_regex(r"[a-z0-9.\-]{1,30}(:[0-9]{1,5})?", fullmatch=True),
       order=st.permutations(["origin", "destination", "key", "sig"]))
def test_parse_any_permutation(origin: str, destination: str, order: list[str]) -> None:
    values = {"origin": origin, "destination": destination, "key": "ed25519:a_B1", "sig": "c2lnbmF0dXJl"}
    header = "X-Matrix " + ",".join(f'{name}="{values[name]}"' for name in order)
    assert parse_header(header) == XMatrixAuth(origin, destination, "ed25519:a_B1", "c2lnbmF0dXJl")
    assert parse_header(format_header(parse_header(header))) == parse_header(header)


def test_path_and_query_encoding() -> None:
    assert federation_path("/_matrix/federation/v1/make_join/{roomId}/{userId}", roomId="!r:h", userId="@a/b:h") == \
        "/_matrix/federation/v1/make_join/%21r%3Ah/%40a%2Fb%3Ah"
    assert encode_query({"ver": ["10", "11"], "user_id": "@a:h", "x": True}) == "ver=10&ver=11&user_id=%40a%3Ah&x=true"


# -- discovery --------------------------------------------------------------------------------

def run(server_name: str, well_known: str | None = None, srv: dict[str, list[SrvRecord]] | None = None
        ) -> tuple[list[Target], list[object]]:
    """Drive decide() like the resolver does, answering from the given tables; returns the
    targets and the lookups it asked for."""
    lookups, asked = Lookups(), []
    srv = srv or {}
    while True:
        step = decide(server_name, lookups)
        if isinstance(step, list):
            return step, asked
        asked.append(step)
        if isinstance(step, NeedWellKnown):
            lookups.well_known = well_known
        else:
            assert isinstance(step, NeedSrv)
            lookups.srv[step.name] = srv.get(step.name, [])


def test_ip_literals_and_explicit_ports_go_direct() -> None:
    assert run("1.2.3.4") == ([Target("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")], [])
    assert run("1.2.3.4:99") == ([Target("1.2.3.4", 99, "1.2.3.4:99", "1.2.3.4")], [])
    assert run("[2001:db8::1]:99") == ([Target("2001:db8::1", 99, "[2001:db8::1]:99", "2001:db8::1")], [])
    assert run("Example.ORG:8000") == ([Target("example.org", 8000, "Example.ORG:8000", "example.org")], [])


def test_well_known_delegation() -> None:
    assert run("example.org", "5.6.7.8:444") == (
        [Target("5.6.7.8", 444, "5.6.7.8:444", "5.6.7.8")], [NeedWellKnown("example.org")])
    assert run("example.org", "matrix.example.org:443")[0] == [
        Target("matrix.example.org", 443, "matrix.example.org:443", "matrix.example.org")]
    # Delegated hostname without a port: SRV of the delegated name, then its port 8448.
    targets, asked = run("example.org", "matrix.example.org",
                         {"_matrix-fed._tcp.matrix.example.org": [SrvRecord(10, 0, 8449, "fed.example.net.")]})
    assert targets == [Target("fed.example.net", 8449, "matrix.example.org", "matrix.example.org")]
    assert asked == [NeedWellKnown("example.org"), NeedSrv("_matrix-fed._tcp.matrix.example.org")]
    targets, asked = run("example.org", "matrix.example.org")
    assert targets == [Target("matrix.example.org", 8448, "matrix.example.org", "matrix.example.org")]
    assert asked[-1] == NeedSrv("_matrix._tcp.matrix.example.org")


def test_srv_without_delegation_and_fallback() -> None:
    records = [SrvRecord(20, 5, 1, "b.example."), SrvRecord(10, 1, 2, "a.example."), SrvRecord(10, 9, 3, "c.example")]
    targets, _ = run("example.org", None, {"_matrix-fed._tcp.example.org": records})
    assert [(t.host, t.port) for t in targets] == [("c.example", 3), ("a.example", 2), ("b.example", 1)]
    assert {(t.host_header, t.tls_name) for t in targets} == {("example.org", "example.org")}
    legacy, asked = run("example.org", None, {"_matrix._tcp.example.org": [SrvRecord(0, 0, 5, "old.example")]})
    assert legacy == [Target("old.example", 5, "example.org", "example.org")]
    assert asked == [NeedWellKnown("example.org"), NeedSrv("_matrix-fed._tcp.example.org"),
                     NeedSrv("_matrix._tcp.example.org")]
    assert run("example.org")[0] == [Target("example.org", 8448, "example.org", "example.org")]
    # "." as target means "no service here".
    assert run("example.org", None, {"_matrix-fed._tcp.example.org": [SrvRecord(0, 0, 1, ".")]})[0] == \
        [Target("example.org", 8448, "example.org", "example.org")]


def test_server_name_parsing_and_well_known_bodies() -> None:
    assert parse_server_name("[::1]:8448") == ("[::1]", 8448)
    for bad in ("", "a:b", "a:99999", "::1", "a b"):
        with pytest.raises(ValueError):
            parse_server_name(bad)
    assert parse_well_known(200, b'{"m.server": "matrix.example.org:443"}') == "matrix.example.org:443"
    for status, body in ((404, b'{"m.server": "x.org"}'), (200, b"<html>"), (200, b'{"m.server": 5}'),
                         (200, b'{"m.server": "bad name!"}'), (200, b"[]"), (200, b" " * 60000)):
        assert parse_well_known(status, body) is None
    assert well_known_cache_seconds(None, "max-age=999999") == 600
    assert well_known_cache_seconds("x.org", None) == 24 * 3600
    assert well_known_cache_seconds("x.org", "public, max-age=3600") == 3600
    assert well_known_cache_seconds("x.org", "max-age=10") == 300
    assert well_known_cache_seconds("x.org", "max-age=99999999") == 48 * 3600


@pytest.mark.parametrize("address,default,with_loopback", [
    ("8.8.8.8", True, True), ("2606:4700::1111", True, True),
    ("127.0.0.1", False, True), ("127.9.9.9", False, True), ("::1", False, True),
    ("::ffff:127.0.0.1", False, True), ("10.0.0.1", False, False), ("192.168.1.2", False, False),
    ("172.16.0.1", False, False), ("169.254.1.1", False, False), ("100.64.0.1", False, False),
    ("fe80::1%eth0", False, False), ("fc00::1", False, False), ("0.0.0.0", False, False),
    ("224.0.0.1", False, False), ("::ffff:10.0.0.1", False, False), ("not an ip", False, False),
])
def test_address_policy(address: str, default: bool, with_loopback: bool) -> None:
    assert address_allowed(address) is default
    assert address_allowed(address, allow_loopback=True) is with_loopback


# -- SRV wire format --------------------------------------------------------------------------

def _answer(qid: int, name: str, records: list[tuple[int, int, int, int, str]], rcode: int = 0) -> bytes:
    query = build_srv_query(name, qid)
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(records), 0, 0)
    out = header + query[12:]
    for ttl, prio, weight, port, target in records:
        labels = b"".join(bytes([len(p)]) + p.encode() for p in target.split(".")) + b"\x00"
        rdata = struct.pack("!HHH", prio, weight, port) + labels
        out += b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, ttl, len(rdata)) + rdata
    return out


def test_srv_query_and_answer() -> None:
    q = build_srv_query("_matrix-fed._tcp.example.org", 0x1234)
    assert q[:2] == b"\x12\x34" and b"\x0b_matrix-fed\x04_tcp\x07example\x03org\x00" in q
    data = _answer(0x1234, "_matrix-fed._tcp.example.org", [(300, 10, 5, 8448, "a.example.org"),
                                                            (60, 20, 0, 443, "b.example.org")])
    records, ttl = parse_srv_response(data, 0x1234)
    assert records == [SrvRecord(10, 5, 8448, "a.example.org"), SrvRecord(20, 0, 443, "b.example.org")]
    assert ttl == 60
    assert parse_srv_response(_answer(7, "x.org", [], rcode=3), 7) == ([], 0)
    for bad, qid in ((data, 0x9999), (data[:20], 0x1234), (b"\x00" * 5, 0x1234), (data[:-3], 0x1234)):
        with pytest.raises(DnsError):
            parse_srv_response(bad, qid)


@given(st.binary(max_size=200))
def test_srv_parser_never_crashes_on_garbage(data: bytes) -> None:
    try:
        parse_srv_response(data, int.from_bytes(data[:2], "big") if len(data) >= 2 else 0)
    except DnsError:
        pass


# -- key documents ----------------------------------------------------------------------------

NOW = 1_700_000_000_000


def test_own_document_is_self_signed_and_checkable() -> None:
    doc = own_key_document("hub.example", KEY, NOW)
    assert doc["valid_until_ts"] == NOW + DAY_MS and doc["old_verify_keys"] == {}
    keys = check_key_document(doc, "hub.example", NOW)
    assert keys["ed25519:k1"] == ServerKey("hub.example", "ed25519:k1", KEY.verify_key_bytes, NOW + DAY_MS)
    with pytest.raises(KeyDocumentError, match="not"):
        check_key_document(doc, "other.example", NOW)


def test_document_checks() -> None:
    doc = own_key_document("hub.example", KEY, NOW)
    tampered = dict(doc, valid_until_ts=doc["valid_until_ts"] + 1)
    with pytest.raises(KeyDocumentError, match="self-signature"):
        check_key_document(tampered, "hub.example", NOW)
    signed_by_stranger = sign_json({k: v for k, v in doc.items() if k != "signatures"}, "hub.example",
                                   signing_key_from_seed(b"\x03" * 32, "ed25519:zz"))
    with pytest.raises(KeyDocumentError, match="own keys"):
        check_key_document(signed_by_stranger, "hub.example", NOW)
    swapped = dict(doc, verify_keys={"ed25519:k1": {"key": OTHER.verify_key_base64}})
    with pytest.raises(KeyDocumentError):
        check_key_document(swapped, "hub.example", NOW)
    for broken in ({**doc, "valid_until_ts": "soon"}, {**doc, "verify_keys": []}, [],
                   {**doc, "verify_keys": {"ed25519:k1": {"key": "c2hvcnQ"}}}):
        with pytest.raises(KeyDocumentError):
            check_key_document(broken, "hub.example", NOW)


def test_validity_rules() -> None:
    # valid_until_ts far in the future is capped at 7 days after fetching.
    doc = own_key_document("hub.example", KEY, NOW, validity_ms=365 * DAY_MS,
                           old_verify_keys={"ed25519:old": {"key": OTHER.verify_key_base64, "expired_ts": NOW - 5}})
    keys = check_key_document(doc, "hub.example", NOW)
    current, old = keys["ed25519:k1"], keys["ed25519:old"]
    assert current.valid_until_ts == NOW + MAX_KEY_VALIDITY_MS
    assert key_valid_at(current, NOW - 10 * DAY_MS)  # signatures made in the past
    assert key_valid_at(current, NOW + MAX_KEY_VALIDITY_MS)
    assert not key_valid_at(current, NOW + MAX_KEY_VALIDITY_MS + 1)
    assert key_valid_at(old, NOW - 6) and not key_valid_at(old, NOW - 5)
    short = check_key_document(own_key_document("hub.example", KEY, NOW, validity_ms=1000), "hub.example", NOW)
    assert not key_valid_at(short["ed25519:k1"], NOW + 1001)


def test_notary_signature() -> None:
    doc = own_key_document("hub.example", KEY, NOW)
    notary = generate_signing_key()
    relayed = notary_sign(doc, "notary.example", notary)
    check_key_document(relayed, "hub.example", NOW)  # the origin's signature still holds
    check_notary_signature(relayed, "notary.example", {notary.key_id: notary.verify_key_bytes})
    with pytest.raises(KeyDocumentError):
        check_notary_signature(relayed, "notary.example", {notary.key_id: KEY.verify_key_bytes})
    with pytest.raises(KeyDocumentError):
        check_notary_signature(doc, "notary.example", {notary.key_id: notary.verify_key_bytes})


def test_key_query_parsing() -> None:
    assert parse_key_query({"server_keys": {"a": {"ed25519:x": {"minimum_valid_until_ts": 5}}, "b": {}}}) == \
        {"a": {"ed25519:x": 5}, "b": {}}
    for bad in ({}, {"server_keys": []}, {"server_keys": {"a": []}},
                {"server_keys": {"a": {"k": {"minimum_valid_until_ts": "x"}}}}):
        with pytest.raises(KeyDocumentError):
            parse_key_query(bad)


# -- the resolver's caching around decide(), and the certificate files (no sockets) -----------

async def test_resolver_caches_well_known_and_srv_answers() -> None:
    from matrix_core.federation.resolver import ServerResolver

    now = [1000.0]
    fetched: list[str] = []
    srv_asked: list[str] = []

    async def fetch(host: str) -> tuple[int, bytes, str | None]:
        fetched.append(host)
        return 200, b'{"m.server": "hs.example.net"}', "max-age=600"

    async def srv(name: str) -> tuple[list[SrvRecord], int]:
        srv_asked.append(name)
        return ([SrvRecord(1, 1, 8999, "box.example.net.")], 120) if name.startswith("_matrix-fed") else ([], 0)

    resolver = ServerResolver(fetch, srv, clock=lambda: now[0])
    expected = [Target("box.example.net", 8999, "hs.example.net", "hs.example.net")]
    assert await resolver.resolve("example.org") == expected
    assert await resolver.resolve("example.org") == expected
    assert fetched == ["example.org"] and srv_asked == ["_matrix-fed._tcp.hs.example.net"]
    now[0] += 601  # the .well-known answer expired (max-age 600); the SRV answer too (TTL 120)
    assert await resolver.resolve("example.org") == expected
    assert fetched == ["example.org"] * 2 and len(srv_asked) == 2

    async def failing(host: str) -> tuple[int, bytes, str | None]:
        raise OSError("connection refused")

    # No delegation when .well-known fails: SRV of the server name itself, Host stays the name.
    broken = ServerResolver(failing, srv, clock=lambda: now[0])
    assert await broken.resolve("example.org") == [Target("box.example.net", 8999, "example.org", "example.org")]
    assert srv_asked[-1] == "_matrix-fed._tcp.example.org"


def test_self_signed_certificate_files(tmp_path) -> None:
    import ssl
    import stat

    from matrix_core.federation.tls import certificate_paths, server_context

    cert, key = certificate_paths(tmp_path, "hub.example:8448")
    assert (cert.name, key.name) == ("federation.crt", "federation.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert isinstance(server_context(cert, key), ssl.SSLContext)
    before = cert.read_bytes()
    assert certificate_paths(tmp_path, "hub.example:8448") == (cert, key) and cert.read_bytes() == before
    # Files named in the config are used as they are; naming only one is an error.
    other = tmp_path / "other"
    other.mkdir()
    own_cert, own_key = certificate_paths(other, "hub.example")
    assert certificate_paths(tmp_path, "x", str(own_cert), str(own_key)) == (own_cert, own_key)
    with pytest.raises(ValueError):
        certificate_paths(tmp_path, "x", str(own_cert), "")
    with pytest.raises(ValueError):
        certificate_paths(tmp_path, "x", str(own_cert), str(tmp_path / "missing.key"))
