"""Smoke test of the real-Synapse launcher used by federation tests and benches."""

from __future__ import annotations

import ssl
import time
import urllib.request
from pathlib import Path

from tests.support.synapse import SynapseProcess


def test_synapse_starts_registers_and_sends(tmp_path: Path) -> None:
    with SynapseProcess(tmp_path / "synapse") as hs:
        assert hs.pid is not None and hs.rss_bytes() > 10 * 1024 * 1024
        assert hs.server_name == f"localhost:{hs.federation_port}"

        user_id, token = hs.register_user("alice", "secret-pw")
        assert user_id == f"@alice:{hs.server_name}"

        room_id = hs.api("POST", "/_matrix/client/v3/createRoom", {"name": "smoke"}, token=token)[
            "room_id"
        ]
        assert room_id.startswith("!")
        res = hs.api(
            "PUT",
            f"/_matrix/client/v3/rooms/{hs.quote(room_id)}/send/m.room.message/txn1",
            {"msgtype": "m.text", "body": "hello"},
            token=token,
        )
        event_id = res["event_id"]
        assert event_id.startswith("$")

        # Same transaction id again: idempotent, same event.
        again = hs.api(
            "PUT",
            f"/_matrix/client/v3/rooms/{hs.quote(room_id)}/send/m.room.message/txn1",
            {"msgtype": "m.text", "body": "hello"},
            token=token,
        )
        assert again["event_id"] == event_id

        ev = hs.api(
            "GET",
            f"/_matrix/client/v3/rooms/{hs.quote(room_id)}/event/{hs.quote(event_id)}",
            token=token,
        )
        assert ev["content"]["body"] == "hello"
        assert ev["sender"] == user_id

        # The TLS listener serves the federation API (self-signed certificate).
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(
            f"{hs.federation_url}/_matrix/federation/v1/version", context=ctx, timeout=10
        ) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(
            f"{hs.federation_url}/_matrix/key/v2/server", context=ctx, timeout=10
        ) as resp:
            assert resp.status == 200

        pid = hs.pid
    assert hs.pid is None
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_two_synapses_federate_over_loopback_tls(tmp_path: Path) -> None:
    """The launcher's federation settings (TLS listener, self-signed cert, loopback
    allowed, no key servers) let two real Synapses join a room and exchange a PDU."""
    q = SynapseProcess.quote
    with SynapseProcess(tmp_path / "a") as a, SynapseProcess(tmp_path / "b") as b:
        _, token_a = a.register_user("alice", "pw-a")
        bob, token_b = b.register_user("bob", "pw-b")
        room_id = a.api(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=token_a
        )["room_id"]
        joined = b.api(
            "POST",
            f"/_matrix/client/v3/join/{q(room_id)}?server_name={q(a.server_name)}",
            {},
            token=token_b,
        )
        assert joined["room_id"] == room_id
        event_id = b.api(
            "PUT",
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "over federation"},
            token=token_b,
        )["event_id"]

        deadline = time.monotonic() + 20
        while True:
            status, ev = a.api(
                "GET",
                f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}",
                token=token_a,
                ok=False,
            )
            if status == 200:
                break
            assert time.monotonic() < deadline, f"event never reached a: {status} {ev}"
            time.sleep(0.05)
        assert ev["sender"] == bob
        assert ev["content"]["body"] == "over federation"
