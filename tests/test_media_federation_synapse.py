"""Federation media with a real Synapse (issue 15): a hub user's picture, posted as m.image in a room
shared with Synapse, downloads (and thumbnails) through Synapse, which fetches it from the hub's
/_matrix/federation/v1/media/download (multipart/mixed); a Synapse user's picture downloads and
thumbnails through the hub, which fetches it over federation, keeps it as a remote-origin row and
serves it from that cache afterwards."""
from __future__ import annotations

import io
import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from tests.support.gateway import GatewayProcess
from tests.support.synapse import SynapseProcess
from tests.test_federation_rooms_synapse import HUB_PW, SYN_PW, hub_api, q, start_hub
from tests.test_media_http import call, upload

AUTH = "/_matrix/client/v1/media"


def picture(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), color).save(buf, "PNG")
    return buf.getvalue()


def synapse_get(synapse: SynapseProcess, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
    assert synapse.client_url is not None
    req = urllib.request.Request(synapse.client_url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def synapse_upload(synapse: SynapseProcess, token: str, data: bytes, content_type: str, name: str) -> str:
    assert synapse.client_url is not None
    req = urllib.request.Request(f"{synapse.client_url}/_matrix/media/v3/upload?filename={name}", data=data,
                                 method="POST", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return str(json.loads(resp.read())["content_uri"])


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    with SynapseProcess(tmp_path_factory.mktemp("synapse") / "hs") as hs:
        hs.register_user("sam", SYN_PW)
        yield hs


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_hub(Path(tmp_path_factory.mktemp("hub")) / "data")
    gw.add_user("hubby", HUB_PW)
    yield gw
    assert gw.stop() == 0, gw.read_log()


def test_a_hub_picture_shows_on_synapse(hub: GatewayProcess, synapse: SynapseProcess) -> None:
    hub_token, sam = hub.login("hubby", HUB_PW), synapse.login("sam", SYN_PW)
    room_id = hub_api(hub, "POST", "/_matrix/client/v3/createRoom",
                      {"room_alias_name": "photos", "preset": "public_chat"}, token=hub_token)["room_id"]
    assert synapse.api("POST", f"/_matrix/client/v3/join/{q('#photos:' + hub.server_name)}", {},
                       token=sam)["room_id"] == room_id
    data = picture((200, 40, 40))
    status, body = upload(hub, hub_token, data, "image/png", "doorbell.png")
    assert status == 200, body
    mxc = body["content_uri"]
    hub_api(hub, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/img1",
            {"msgtype": "m.image", "body": "doorbell.png", "url": mxc, "info": {"mimetype": "image/png"}},
            token=hub_token)
    # Synapse's user reads the event and downloads the picture through Synapse (fetched over federation)
    events = synapse.api("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=20", token=sam)["chunk"]
    for _ in range(20):
        if any(ev.get("content", {}).get("url") == mxc for ev in events):
            break
        synapse.api("GET", "/_matrix/client/v3/sync?timeout=3000", token=sam, timeout=40)
        events = synapse.api("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=20",
                             token=sam)["chunk"]
    assert any(ev.get("content", {}).get("url") == mxc for ev in events)
    status, headers, got = synapse_get(synapse, f"{AUTH}/download/{mxc[len('mxc://'):]}", sam)
    assert status == 200, got[:300]
    assert got == data and headers["Content-Type"] == "image/png"
    status, headers, thumb = synapse_get(synapse, f"{AUTH}/thumbnail/{mxc[len('mxc://'):]}?width=32&height=32"
                                                  "&method=scale", sam)
    assert status == 200 and headers["Content-Type"].startswith("image/"), thumb[:300]


def test_a_synapse_picture_shows_on_the_hub_and_is_cached(hub: GatewayProcess, synapse: SynapseProcess) -> None:
    hub_token, sam = hub.login("hubby", HUB_PW), synapse.login("sam", SYN_PW)
    data = picture((40, 40, 220))
    mxc = synapse_upload(synapse, sam, data, "image/png", "boiler.png")
    server_and_id = mxc[len("mxc://"):]
    status, headers, got = call(hub, "GET", f"{AUTH}/download/{server_and_id}", token=hub_token)
    assert status == 200, got[:300]
    assert got == data and headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == "inline; filename=boiler.png"
    status, headers, thumb = call(hub, "GET", f"{AUTH}/thumbnail/{server_and_id}?width=30&height=30", token=hub_token)
    assert status == 200 and Image.open(io.BytesIO(thumb)).size == (30, 20)
    # kept as a remote-origin row, in no one's quota
    with sqlite3.connect(hub.data_dir / "homeserver.db") as conn:
        rows = conn.execute("SELECT origin, user_id, size FROM media WHERE media_id = ?",
                            (server_and_id.split("/")[1],)).fetchall()
    assert rows == [(synapse.server_name, "", len(data))]
    # allow_remote=false: the cache still answers; unknown remote media are a 404
    status, _, again = call(hub, "GET", f"{AUTH}/download/{server_and_id}?allow_remote=false", token=hub_token)
    assert status == 200 and again == data
    status, _, raw = call(hub, "GET", f"{AUTH}/download/{synapse.server_name}/NoSuchMedia", token=hub_token)
    assert status == 404 and json.loads(raw)["errcode"] == "M_NOT_FOUND"
    assert "Traceback" not in hub.read_log()
