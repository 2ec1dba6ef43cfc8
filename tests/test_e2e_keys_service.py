"""The E2EE keys service in process: what the cross-signing service (hs.cross_signing) gives is
merged into /keys/query answers; a user without cross-signing keys gets none."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matrix_core.homeserver import Homeserver, HomeserverSettings
from matrix_core.service.accounts import Requester
from matrix_core.signing import generate_signing_key

U = "@a:hub"


def device_keys(device_id: str) -> dict[str, Any]:
    return {"user_id": U, "device_id": device_id, "algorithms": ["m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{device_id}": "AAAA", f"curve25519:{device_id}": "BBBB"},
            "signatures": {U: {f"ed25519:{device_id}": "c2ln"}}}


class FakeCrossSigning:
    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str]]] = []

    async def keys_for_query(self, requester: str, user_ids: list[str]) -> dict[str, Any]:
        self.asked.append((requester, user_ids))
        return {"master_keys": {U: {"user_id": U, "usage": ["master"], "keys": {"ed25519:M": "M"}}},
                "self_signing_keys": {}, "user_signing_keys": {}}

    async def device_signatures(self, user_id: str, device_id: str) -> dict[str, dict[str, str]]:
        return {user_id: {"ed25519:SSK": "c3Nr"}}


async def test_cross_signing_hooks_merge_into_query(tmp_path: Path) -> None:
    hs = Homeserver(HomeserverSettings("hub", tmp_path / "db.sqlite", generate_signing_key()))
    await hs.start()
    try:
        await hs.accounts.create_user(U, "pw")
        login = await hs.accounts.login(U, "pw", "DEV", None, None)
        requester = Requester(U, "DEV", False, login["access_token"])
        await hs.e2e_keys.upload(requester, {"device_keys": device_keys("DEV")})
        plain = await hs.e2e_keys.query(requester, {"device_keys": {U: [], "@b:elsewhere": []}})
        assert plain.get("master_keys", {}) == {} and plain.get("self_signing_keys", {}) == {}
        assert plain["device_keys"][U]["DEV"]["signatures"] == {U: {"ed25519:DEV": "c2ln"}}

        fake = FakeCrossSigning()
        hs.cross_signing = fake  # type: ignore[attr-defined]
        answer = await hs.e2e_keys.query(requester, {"device_keys": {U: [], "@b:elsewhere": []}})
        assert fake.asked == [(U, [U])]  # only local users are asked about
        assert answer["master_keys"][U]["usage"] == ["master"]
        assert answer["device_keys"][U]["DEV"]["signatures"] == {U: {"ed25519:DEV": "c2ln", "ed25519:SSK": "c3Nr"}}
        assert "elsewhere" in answer["failures"]
    finally:
        await hs.stop()
