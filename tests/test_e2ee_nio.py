"""End-to-end encryption with matrix-nio[e2e] (0.26: Olm/Megolm through vodozemac, no libolm needed) against the
CLI-started hub (issue 14): keys uploaded, the other user's device keys queried, a one-time key claimed for an Olm
session, the Megolm room key sent to-device inside it, and the encrypted room message decrypted by the other side."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysClaimResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    ToDeviceMessage,
    ToDeviceResponse,
    UnknownToDeviceEvent,
)

from tests.conftest import PASSWORD
from tests.support.gateway import GatewayProcess




async def encrypted_client(gw: GatewayProcess, localpart: str, store: Path) -> AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(gw.http_url, f"@{localpart}:localhost", store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False))
    response = await client.login(PASSWORD, device_name=f"{localpart}-nio-e2ee")
    assert isinstance(response, LoginResponse), response
    assert client.should_upload_keys
    uploaded = await client.keys_upload()
    assert uploaded.signed_curve25519_count > 0, uploaded  # type: ignore[union-attr]
    return client


async def sync(client: AsyncClient, timeout: int = 0) -> SyncResponse:
    response = await client.sync(timeout=timeout, full_state=False)
    assert isinstance(response, SyncResponse), response
    if client.should_query_keys:
        await client.keys_query()
    return response


async def test_olm_megolm_room_message_between_two_nio_users(gateway: GatewayProcess, tmp_path: Path) -> None:
    gateway.add_user("nio_ann", PASSWORD)
    gateway.add_user("nio_ben", PASSWORD)
    ann = await encrypted_client(gateway, "nio_ann", tmp_path / "ann")
    ben = await encrypted_client(gateway, "nio_ben", tmp_path / "ben")
    try:
        created = await ann.room_create(invite=[ben.user_id], initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        assert isinstance(created, RoomCreateResponse), created
        await sync(ben)
        assert isinstance(await ben.join(created.room_id), JoinResponse)
        await sync(ben)
        for _ in range(5):  # until ann's room shows ben joined and his device is known
            await sync(ann, timeout=2000)
            room = ann.rooms.get(created.room_id)
            if room and ben.user_id in room.users and ann.device_store.active_user_devices(ben.user_id):
                break
        assert ann.rooms[created.room_id].encrypted
        assert [d.id for d in ann.device_store.active_user_devices(ben.user_id)] == [ben.device_id]

        # room_send claims ben's one-time key (/keys/claim), opens an Olm session, sends the Megolm key to-device
        sent = await ann.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "secret"},
                                   ignore_unverified_devices=True)
        assert isinstance(sent, RoomSendResponse), sent
        status, raw = gateway.request("GET", f"/_matrix/client/v3/rooms/{quote(created.room_id)}/event/"
                                      f"{quote(sent.event_id)}", token=ann.access_token)
        assert status == 200 and raw["type"] == "m.room.encrypted" and "secret" not in str(raw)  # the hub never sees it

        texts: list[str] = []
        for _ in range(5):
            response = await sync(ben, timeout=2000)
            room = response.rooms.join.get(created.room_id)
            for ev in room.timeline.events if room else []:
                assert not isinstance(ev, MegolmEvent), f"ben could not decrypt: {ev}"
                if isinstance(ev, RoomMessageText):
                    texts.append(ev.body)
            if texts:
                break
        assert texts == ["secret"]
    finally:
        await ann.close()
        await ben.close()


async def test_key_claim_and_plain_to_device(gateway: GatewayProcess, tmp_path: Path) -> None:
    gateway.add_user("nio_cat", PASSWORD)
    gateway.add_user("nio_dan", PASSWORD)
    cat = await encrypted_client(gateway, "nio_cat", tmp_path / "cat")
    dan = await encrypted_client(gateway, "nio_dan", tmp_path / "dan")
    try:
        first = await sync(dan)
        claimed = await cat.keys_claim({dan.user_id: [dan.device_id]})
        assert isinstance(claimed, KeysClaimResponse), claimed
        assert list(claimed.one_time_keys[dan.user_id]) == [dan.device_id]
        message = ToDeviceMessage("org.example.ping", dan.user_id, dan.device_id, {"n": 1})
        assert isinstance(await cat.to_device(message, tx_id="ping-1"), ToDeviceResponse)
        got = await dan.sync(timeout=5000, since=first.next_batch)
        assert isinstance(got, SyncResponse), got
        pings = [ev for ev in got.to_device_events if isinstance(ev, UnknownToDeviceEvent)]
        assert [(p.source["type"], p.source["content"], p.sender) for p in pings] == [
            ("org.example.ping", {"n": 1}, cat.user_id)]
        # the next sync acknowledges it: not delivered again
        again = await dan.sync(timeout=0, since=got.next_batch)
        assert isinstance(again, SyncResponse) and not again.to_device_events
    finally:
        await cat.close()
        await dan.close()
