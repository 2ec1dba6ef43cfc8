"""End-to-end encryption over federation (issue 14): the key endpoints we serve, the key
queries and claims we make for remote users, and the E2EE EDUs both ways.

Served: `POST /user/keys/query`, `POST /user/keys/claim`, `GET /user/devices/{userId}` for our
users. Asked: /keys/query and /keys/claim for remote users go to their servers in parallel, each
bounded by the request's timeout; a server that fails or never answers is named in `failures`.
A remote user's whole device list is cached (store/e2e_federation.py) while they share a room
with us, and kept current by their `m.device_list_update` EDUs: one that does not follow the
cached stream id (a gap in `prev_id`) triggers a resync through `/user/devices/{userId}`.

EDUs out: `m.direct_to_device` (from sendToDevice, through the durable outbox: rows written
before the client's 200, deleted once a transaction carrying them is acknowledged),
`m.device_list_update` (a local user's device keys changed or a device was deleted) and
`m.signing_key_update` (master/self-signing keys), to the servers sharing a room with the user.
EDUs in: malformed ones are dropped with a rate-limited log line (federation/edus.py), never
failing the transaction.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from .. import e2e_rules as rules
from .. import errors
from ..e2e_federation_rules import (follows, own_keys, parse_device_list_update, parse_direct_to_device,
                                    parse_signing_key_update)
from ..events import Event
from ..identifiers import is_valid_user_id, server_of
from ..store import e2e_federation as store
from ..store import e2e_keys as key_rows
from ..store import federation as federation_store
from .client import federation_path
from .server import FEDERATION_ROUTES, FederationRequest

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

QUERY_PATH = "/_matrix/federation/v1/user/keys/query"
CLAIM_PATH = "/_matrix/federation/v1/user/keys/claim"
DEVICES_PATH = "/_matrix/federation/v1/user/devices/{userId}"
RESYNC_TIMEOUT = 30.0


def _failure(exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "status", 503)
    if isinstance(exc, asyncio.TimeoutError):
        return {"status": 504, "message": "the server did not answer in time"}
    return {"status": status if isinstance(status, int) else 503, "message": str(exc)[:200] or type(exc).__name__}


class E2eFederation:
    def __init__(self, hs: Homeserver) -> None:
        self.hs = hs
        self.db = hs.db
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resyncing: set[str] = set()

    async def start(self) -> None:
        hs = self.hs
        hs.e2e_keys.remote = self
        hs.e2e_keys.on_local_change.append(self._local_device_change)
        hs.cross_signing.on_keys_changed.append(self._local_signing_change)
        hs.to_device.federation = self.queue
        self._unsubscribe = hs.stream.subscribe(self._on_events)
        self.queue([(i, dest, json.loads(text)) for i, dest, text in await store.outbox(self.db)])

    async def stop(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("E2EE federation task failed: %s", task.exception())

    def _on_events(self, entries: list[tuple[int, Event]]) -> None:
        """A remote user's membership changed: their cached device list may have missed updates
        sent while they shared no room with us (a rejoin), so it goes; the next query refetches."""
        users = {ev.state_key for _, ev in entries if ev.type == "m.room.member" and ev.state_key
                 and server_of(ev.state_key) != self.hs.server_name}
        if users:
            def write(conn: Any) -> None:
                for user_id in users:
                    store.drop_device_list(conn, str(user_id))
            self._spawn(self.db.write(write))

    # -- the durable outbox ------------------------------------------------------------------

    def queue(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Outbox rows (already committed) go with the destination's next transaction; the row
        is deleted once a transaction carrying it was acknowledged."""
        for row_id, destination, edu in rows:
            self.hs.federation_sender.queue_edu(destination, ("e2e-outbox", row_id), edu,
                                                after_sent=self._after_sent(row_id))

    def _after_sent(self, row_id: int) -> Callable[[], None]:
        return lambda: self._spawn(self._sent(row_id))

    async def _sent(self, row_id: int) -> None:
        await self.db.write(lambda conn: store.remove_outbox(conn, [row_id]))

    async def _queue_durably(self, edus: list[tuple[str, dict[str, Any]]]) -> None:
        if not edus:
            return
        ids = await self.db.write(lambda conn: store.add_outbox(conn, [(d, json.dumps(e, ensure_ascii=False))
                                                                        for d, e in edus]))
        self.queue([(i, d, e) for i, (d, e) in zip(ids, edus)])

    def _servers_sharing(self, user_id: str) -> set[str]:
        servers: set[str] = set()
        for room_id in self.hs.rooms.joined_room_ids(user_id):
            servers |= self.hs.federation_sender.servers_in_room(room_id)
        return servers - {self.hs.server_name}

    async def _tracked(self, user_id: str) -> bool:
        """A remote user sharing a room with us: their updates reach us, so a cache stays current."""
        return await federation_store.user_shares_a_room(self.db, user_id)

    # -- outbound EDUs -----------------------------------------------------------------------

    def _local_device_change(self, user_id: str, device_ids: list[str], stream_id: int) -> None:
        if self._servers_sharing(user_id):
            self._spawn(self._send_device_update(user_id, device_ids, stream_id))

    async def _send_device_update(self, user_id: str, device_ids: list[str], stream_id: int) -> None:
        servers = self._servers_sharing(user_id)
        edus: list[tuple[str, dict[str, Any]]] = []
        contents: list[dict[str, Any]] = []
        for device_id in device_ids:
            content: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "stream_id": stream_id}
            found = await key_rows.device_keys(self.db, user_id, [device_id])
            if found:
                keys = json.loads(found[0][1])
                for signer, by_key in (await self.hs.cross_signing.device_signatures(user_id, device_id)).items():
                    keys.setdefault("signatures", {}).setdefault(signer, {}).update(by_key)
                content["keys"] = keys
                if found[0][2] is not None:
                    content["device_display_name"] = found[0][2]
            else:
                content["deleted"] = True
            contents.append(content)

        def write(conn: Any) -> list[int]:
            prev = store.advance_sent(conn, user_id, stream_id)
            for content in contents:
                content["prev_id"] = [prev] if prev else []
                edus.extend((server, {"edu_type": "m.device_list_update", "content": content}) for server in servers)
            return store.add_outbox(conn, [(d, json.dumps(e, ensure_ascii=False)) for d, e in edus])

        ids = await self.db.write(write)
        self.queue([(i, d, e) for i, (d, e) in zip(ids, edus)])

    def _local_signing_change(self, user_id: str) -> None:
        if server_of(user_id) == self.hs.server_name and self._servers_sharing(user_id):
            self._spawn(self._send_signing_update(user_id))

    async def _send_signing_update(self, user_id: str) -> None:
        keys = await self.hs.cross_signing.keys_for_query("", [user_id])
        content: dict[str, Any] = {"user_id": user_id}
        if user_id in keys.get("master_keys", {}):
            content["master_key"] = keys["master_keys"][user_id]
        if user_id in keys.get("self_signing_keys", {}):
            content["self_signing_key"] = keys["self_signing_keys"][user_id]
        if len(content) > 1:
            await self._queue_durably([(s, {"edu_type": "m.signing_key_update", "content": content})
                                       for s in self._servers_sharing(user_id)])

    # -- inbound EDUs (called by federation/edus.py; BadEDU: dropped with a log line) ---------

    async def on_direct_to_device(self, origin: str, content: Any) -> None:
        msg = parse_direct_to_device(origin, content)
        await self.hs.to_device.receive_remote(origin, msg.sender, msg.type, msg.message_id, msg.messages)

    async def on_device_list_update(self, origin: str, content: Any) -> None:
        update = parse_device_list_update(origin, content)
        user_id = update.user_id
        if not await self._tracked(user_id):
            return  # nobody here shares a room with them: nothing cached, nobody to tell
        cached = await store.cached_device_list(self.db, user_id)
        if cached is not None:
            known, body_json = cached
            if follows(known, update):
                body = json.loads(body_json)
                if update.deleted:
                    body["devices"].pop(update.device_id, None)
                elif update.keys is not None:
                    body["devices"][update.device_id] = update.keys
                await self.db.write(lambda conn: store.set_device_list(conn, user_id, update.stream_id,
                                                                       json.dumps(body)))
            else:  # a gap (or a list cached without a stream id): fetch the whole list again
                await self.db.write(lambda conn: store.drop_device_list(conn, user_id))
                self._spawn(self.resync(user_id))
        await self.hs.e2e_keys.remote_changed(user_id)

    async def on_signing_key_update(self, origin: str, content: Any) -> None:
        user_id, update = parse_signing_key_update(origin, content)
        if not await self._tracked(user_id):
            return
        cached = await store.cached_device_list(self.db, user_id)
        if cached is not None:
            body = json.loads(cached[1])
            body.update(update)
            await self.db.write(lambda conn: store.set_device_list(conn, user_id, cached[0], json.dumps(body)))
        await self.hs.e2e_keys.remote_changed(user_id)

    async def resync(self, user_id: str) -> None:
        """Fetch a remote user's whole device list (after a gap in their updates) into the cache."""
        if user_id in self._resyncing:
            return
        self._resyncing.add(user_id)
        try:
            answer = await self.hs.federation_client.request(
                server_of(user_id), "GET", federation_path(DEVICES_PATH, userId=user_id), timeout=RESYNC_TIMEOUT)
            if not isinstance(answer, dict) or answer.get("user_id") != user_id:
                return
            stream_id = answer.get("stream_id")
            devices: dict[str, Any] = {}
            for entry in answer.get("devices", []) if isinstance(answer.get("devices"), list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("device_id"), str):
                    keys = own_keys(entry.get("keys"), user_id)
                    if keys is not None:
                        devices[entry["device_id"]] = keys
            body: dict[str, Any] = {"devices": devices}
            for field in ("master_key", "self_signing_key"):
                if own_keys(answer.get(field), user_id) is not None:
                    body[field] = answer[field]
            stream = stream_id if isinstance(stream_id, int) and not isinstance(stream_id, bool) else None
            await self.db.write(lambda conn: store.set_device_list(conn, user_id, stream, json.dumps(body)))
        except Exception as exc:
            log.info("device-list resync of %s failed: %s", user_id, exc)
        finally:
            self._resyncing.discard(user_id)

    # -- asking other servers (service/e2e_keys.RemoteKeys) -----------------------------------

    async def query(self, wanted: dict[str, list[str]], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
        result: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        failures: dict[str, Any] = {}
        to_ask: dict[str, dict[str, list[str]]] = {}
        for user_id, device_ids in wanted.items():
            cached = await store.cached_device_list(self.db, user_id) if await self._tracked(user_id) else None
            if cached is None:
                to_ask.setdefault(server_of(user_id), {})[user_id] = device_ids
                continue
            self._merge(result, user_id, json.loads(cached[1]), device_ids)

        async def ask(server: str, users: dict[str, list[str]]) -> Any:
            return await self.hs.federation_client.request(server, "POST", QUERY_PATH, body={"device_keys": users},
                                                           timeout=timeout)

        servers = sorted(to_ask)
        answers = await asyncio.gather(*(asyncio.wait_for(ask(s, to_ask[s]), timeout) for s in servers),
                                       return_exceptions=True)
        to_cache: list[tuple[str, str]] = []
        for server, answer in zip(servers, answers):
            if isinstance(answer, BaseException):
                failures[server] = _failure(answer)
                continue
            if not isinstance(answer, dict):
                failures[server] = {"status": 502, "message": "not a key query answer"}
                continue
            device_keys = answer.get("device_keys")
            if not isinstance(device_keys, dict):
                device_keys = {}
            for user_id, device_ids in to_ask[server].items():
                devices = device_keys.get(user_id)
                body: dict[str, Any] = {"devices": {d: k for d, k in devices.items()
                                                    if own_keys(k, user_id) is not None and k.get("device_id") == d}
                                        if isinstance(devices, dict) else {}}
                for field, plural in (("master_key", "master_keys"), ("self_signing_key", "self_signing_keys")):
                    by_user = answer.get(plural)
                    if isinstance(by_user, dict) and own_keys(by_user.get(user_id), user_id) is not None:
                        body[field] = by_user[user_id]
                self._merge(result, user_id, body, [])
                if not device_ids and await self._tracked(user_id):
                    to_cache.append((user_id, json.dumps(body)))
        if to_cache:
            def write(conn: Any) -> None:
                for user_id, text in to_cache:
                    store.set_device_list(conn, user_id, None, text)
            await self.db.write(write)
        return {k: v for k, v in result.items() if v or k == "device_keys"}, failures

    @staticmethod
    def _merge(result: dict[str, Any], user_id: str, body: dict[str, Any], device_ids: list[str]) -> None:
        devices = body.get("devices", {})
        result["device_keys"][user_id] = {d: k for d, k in devices.items() if not device_ids or d in device_ids}
        if "master_key" in body:
            result["master_keys"][user_id] = body["master_key"]
        if "self_signing_key" in body:
            result["self_signing_keys"][user_id] = body["self_signing_key"]

    async def claim(self, wanted: dict[str, dict[str, str]], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            by_server.setdefault(server_of(user_id), {})[user_id] = devices

        async def ask(server: str) -> Any:
            return await self.hs.federation_client.request(server, "POST", CLAIM_PATH,
                                                           body={"one_time_keys": by_server[server]}, timeout=timeout)

        servers = sorted(by_server)
        answers = await asyncio.gather(*(asyncio.wait_for(ask(s), timeout) for s in servers), return_exceptions=True)
        keys: dict[str, Any] = {}
        failures: dict[str, Any] = {}
        for server, answer in zip(servers, answers):
            if isinstance(answer, BaseException):
                failures[server] = _failure(answer)
                continue
            got = answer.get("one_time_keys") if isinstance(answer, dict) else None
            if not isinstance(got, dict):
                failures[server] = {"status": 502, "message": "not a key claim answer"}
                continue
            for user_id, devices in by_server[server].items():
                theirs = got.get(user_id)
                if isinstance(theirs, dict):
                    keys[user_id] = {d: k for d, k in theirs.items() if d in devices and isinstance(k, dict)}
        return keys, failures


# -- served endpoints --------------------------------------------------------------------------

def _local_only(hs: Homeserver, users: dict[str, Any]) -> dict[str, Any]:
    return {u: v for u, v in users.items() if server_of(u) == hs.server_name}


async def on_user_keys_query(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    body = req.content if isinstance(req.content, dict) else None
    if body is None:
        raise errors.bad_json("the body must be a JSON object")
    wanted = _local_only(hs, rules.check_query(body))
    answer = await hs.e2e_keys.local_keys("", wanted)
    answer.pop("user_signing_keys", None)  # a user's own business
    return 200, answer


async def on_user_keys_claim(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    body = req.content if isinstance(req.content, dict) else None
    if body is None:
        raise errors.bad_json("the body must be a JSON object")
    wanted = _local_only(hs, rules.check_claim(body))
    answer = await hs.e2e_keys.claim_local(wanted)
    return 200, {"one_time_keys": answer["one_time_keys"]}


async def on_user_devices(hs: Homeserver, origin: str, req: FederationRequest) -> tuple[int, Any]:
    user_id = req.path_params["userId"]
    if not is_valid_user_id(user_id) or server_of(user_id) != hs.server_name:
        raise errors.invalid_param("not a user of this server")
    answer = await hs.e2e_keys.local_keys("", {user_id: []})
    devices = [{"device_id": device_id, "keys": keys,
                **({"device_display_name": keys["unsigned"]["device_display_name"]}
                   if "device_display_name" in keys.get("unsigned", {}) else {})}
               for device_id, keys in sorted(answer["device_keys"].get(user_id, {}).items())]
    for keys in (d["keys"] for d in devices):
        keys.pop("unsigned", None)
    out: dict[str, Any] = {"user_id": user_id, "stream_id": await store.last_sent(hs.db, user_id),
                           "devices": devices}
    if user_id in answer.get("master_keys", {}):
        out["master_key"] = answer["master_keys"][user_id]
    if user_id in answer.get("self_signing_keys", {}):
        out["self_signing_key"] = answer["self_signing_keys"][user_id]
    return 200, out


def register(routes: Any = FEDERATION_ROUTES) -> None:
    routes.add("POST", QUERY_PATH, on_user_keys_query)
    routes.add("POST", CLAIM_PATH, on_user_keys_claim)
    routes.add("GET", DEVICES_PATH, on_user_devices)


register()
