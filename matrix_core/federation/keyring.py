"""The KeyRing: other servers' signing keys, fetched, checked, cached (memory and SQLite).

Keys come from the server itself (GET /_matrix/key/v2/server) or, failing that, from notaries
(POST /_matrix/key/v2/query). Every document must be self-signed; notary answers must also carry
the notary's signature. A key is only used for a signature made at a time it was valid (the
caller says which time: now for a request, origin_server_ts for an event). The same cache serves
our own notary endpoints.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..canonical_json import encode_json
from ..clock import now_ms as _now_ms
from ..store import federation as federation_store
from ..signing import SignatureError, SigningKey, decode_base64, encode_base64, verify_json_signature
from .client import FederationTransportError
from .keys import (
    KeyDocumentError, ServerKey, check_key_document, check_notary_signature, key_valid_at, notary_sign,
    own_key_document,
)

if TYPE_CHECKING:
    from ..store import Database
    from .client import FederationClient

log = logging.getLogger(__name__)

__all__ = ["KeyLookupError", "KeyRing"]

# At most one fetch of a server's keys in this window (a flood of requests naming unknown key ids
# must not turn us into a request amplifier against that server).
MIN_REFETCH_MS = 30_000
KEY_FETCH_TIMEOUT = 15.0


class KeyLookupError(Exception):
    """No key valid at the requested time could be found for that server and key id."""


class KeyRing:
    """Server keys for verifying requests and events, with our own key as the first entry."""

    def __init__(self, server_name: str, signing_key: SigningKey, client: FederationClient | None = None,
                 db: Database | None = None,
                 notaries: Iterable[str] = (), clock: Callable[[], int] = _now_ms) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.client = client  # a FederationClient (or anything with its `request`)
        self.db = db  # the hub's Database, or None for a memory-only keyring
        self.notaries = list(notaries)
        self.clock = clock
        self._keys: dict[tuple[str, str], ServerKey] = {}
        self._docs: dict[str, dict[str, Any]] = {}  # server -> its latest key document
        self._loaded: set[str] = set()
        self._last_fetch: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}

    # -- our own keys ------------------------------------------------------------------------

    def own_document(self) -> dict[str, Any]:
        return own_key_document(self.server_name, self.signing_key, self.clock())

    # -- lookups -----------------------------------------------------------------------------

    async def get_server_key(self, server_name: str, key_id: str, valid_at_ms: int) -> ServerKey:
        """The key `key_id` of `server_name`, valid at `valid_at_ms`; fetched if need be."""
        if server_name == self.server_name:
            if key_id == self.signing_key.key_id:
                return ServerKey(server_name, key_id, self.signing_key.verify_key_bytes, 2**53 - 1)
            raise KeyLookupError(f"we have no key {key_id}")
        key = await self._cached(server_name, key_id)
        if key is not None and key_valid_at(key, valid_at_ms):
            return key
        await self._refresh(server_name, key_id, valid_at_ms)
        key = self._keys.get((server_name, key_id))
        if key is None:
            raise KeyLookupError(f"no key {key_id} found for {server_name}")
        if not key_valid_at(key, valid_at_ms):
            raise KeyLookupError(f"key {key_id} of {server_name} is not valid at {valid_at_ms}")
        return key

    async def verify_json_for_server(self, server_name: str, obj: dict[str, Any], valid_at_ms: int) -> None:
        """Check that `obj` carries a valid signature by `server_name` with a key valid at the time.

        Every ed25519 signature by that server whose key we can find must verify; at least one
        must. Raises SignatureError otherwise.
        """
        sigs = obj.get("signatures", {}).get(server_name) if isinstance(obj.get("signatures"), dict) else None
        if not isinstance(sigs, dict) or not sigs:
            raise SignatureError(f"not signed by {server_name}")
        verified = False
        errors: list[str] = []
        for key_id in sigs:
            if not key_id.startswith("ed25519:"):
                continue
            try:
                key = await self.get_server_key(server_name, key_id, valid_at_ms)
            except KeyLookupError as exc:
                errors.append(str(exc))
                continue
            verify_json_signature(obj, server_name, key_id, key.key)
            verified = True
        if not verified:
            raise SignatureError(f"no usable key of {server_name}: {'; '.join(errors) or 'no ed25519 signature'}")

    async def get_verify_key(self, server_name: str, key_id: str, valid_at_ms: int) -> bytes | None:
        """The 32-byte verify key, or None when no key valid at `valid_at_ms` can be found."""
        try:
            return (await self.get_server_key(server_name, key_id, valid_at_ms)).key
        except KeyLookupError:
            return None

    # -- fetching ----------------------------------------------------------------------------

    async def _refresh(self, server_name: str, key_id: str, minimum_valid_ms: int) -> None:
        """Fetch `server_name`'s keys (one fetch in flight per server, throttled)."""
        pending = self._inflight.get(server_name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        last = self._last_fetch.get(server_name)
        if last is not None and self.clock() - last < MIN_REFETCH_MS:
            return
        self._last_fetch[server_name] = self.clock()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[server_name] = fut
        try:
            await self._fetch_any(server_name, key_id, minimum_valid_ms)
        finally:
            del self._inflight[server_name]
            fut.set_result(None)

    async def _fetch_any(self, server_name: str, key_id: str, minimum_valid_ms: int) -> None:
        if self.client is None:
            return
        try:
            await self.fetch_direct(server_name)
            key = self._keys.get((server_name, key_id))
            if key is not None and key_valid_at(key, minimum_valid_ms):
                return
        except (FederationTransportError, KeyDocumentError) as exc:
            log.info("fetching the keys of %s directly failed: %s", server_name, exc)
        for notary in self.notaries:
            if notary == server_name:
                continue
            try:
                await self.fetch_via_notary(notary, {server_name: {key_id: minimum_valid_ms}})
            except (FederationTransportError, KeyDocumentError, KeyLookupError) as exc:
                log.info("fetching the keys of %s via %s failed: %s", server_name, notary, exc)
                continue
            key = self._keys.get((server_name, key_id))
            if key is not None and key_valid_at(key, minimum_valid_ms):
                return

    async def fetch_direct(self, server_name: str) -> dict[str, ServerKey]:
        """GET the server's own key document, check its self-signature, cache and return its keys."""
        assert self.client is not None
        doc = await self.client.request(server_name, "GET", "/_matrix/key/v2/server", authenticated=False,
                                        timeout=KEY_FETCH_TIMEOUT)
        keys = check_key_document(doc, server_name, self.clock())
        await self._store(server_name, doc, keys, from_server=server_name)
        return keys

    async def fetch_via_notary(self, notary: str, wanted: dict[str, dict[str, int]]) -> dict[str, dict[str, ServerKey]]:
        """POST /_matrix/key/v2/query to `notary` for {server: {key_id: minimum_valid_until_ts}}.

        Each returned document must be self-signed and signed by the notary (whose own keys are
        taken from its answer when it speaks for itself, else looked up in this keyring).
        """
        assert self.client is not None
        body = {"server_keys": {
            server: {kid: {"minimum_valid_until_ts": minimum} for kid, minimum in key_ids.items() if kid}
            for server, key_ids in wanted.items()
        }}
        answer = await self.client.request(notary, "POST", "/_matrix/key/v2/query", body=body,
                                           authenticated=False, timeout=KEY_FETCH_TIMEOUT)
        docs = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(docs, list):
            raise KeyDocumentError(f"notary {notary} answered without a server_keys list")
        now = self.clock()
        found: dict[str, dict[str, ServerKey]] = {}
        for doc in docs:
            server = doc.get("server_name") if isinstance(doc, dict) else None
            if server not in wanted:
                continue
            keys = check_key_document(doc, server, now)
            if server == notary:
                notary_keys = {kid: k.key for kid, k in keys.items() if k.expired_ts is None}
            else:
                notary_keys = {}
                for kid in (doc.get("signatures") or {}).get(notary, {}):
                    try:
                        notary_keys[kid] = (await self.get_server_key(notary, kid, now)).key
                    except KeyLookupError:
                        continue
            check_notary_signature(doc, notary, notary_keys)
            await self._store(server, doc, keys, from_server=notary)
            found[server] = keys
        return found

    # -- the cache ---------------------------------------------------------------------------

    async def _cached(self, server_name: str, key_id: str) -> ServerKey | None:
        key = self._keys.get((server_name, key_id))
        if key is None and self.db is not None and server_name not in self._loaded:
            self._loaded.add(server_name)
            await self._load(self.db, server_name)
            key = self._keys.get((server_name, key_id))
        return key

    async def _load(self, db: Database, server_name: str) -> None:
        for key_id, verify_key, valid_until, expired in await federation_store.server_keys(db, server_name):
            self._keys.setdefault((server_name, key_id),
                                  ServerKey(server_name, key_id, decode_base64(verify_key), valid_until, expired))
        doc = await federation_store.key_document(db, server_name)
        if doc is not None and server_name not in self._docs:
            self._docs[server_name] = json.loads(doc)

    async def _store(self, server_name: str, doc: dict[str, Any], keys: dict[str, ServerKey], from_server: str) -> None:
        # Keep only the origin's own signatures: that is what we relay (with ours) as a notary.
        kept = dict(doc)
        kept["signatures"] = {server_name: dict(doc["signatures"][server_name])}
        current = self._docs.get(server_name)
        if current is None or current.get("valid_until_ts", 0) <= kept["valid_until_ts"]:
            self._docs[server_name] = kept
        for key_id, key in keys.items():
            self._keys[(server_name, key_id)] = key
        if self.db is None:
            return
        now = self.clock()
        doc_json = encode_json(self._docs[server_name]).decode()
        rows = [(k.key_id, encode_base64(k.key), k.valid_until_ts, k.expired_ts) for k in keys.values()]
        await federation_store.store_keys(self.db, server_name, rows, from_server,
                                          self._docs[server_name]["valid_until_ts"], doc_json, now)

    # -- serving as a notary -----------------------------------------------------------------

    async def notary_documents(self, wanted: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
        """Documents answering a key query, each signed by us; refetched when the cached one
        expires before the asked minimum_valid_until_ts or lacks a key id asked for."""
        out: list[dict[str, Any]] = []
        now = self.clock()
        for server, key_ids in wanted.items():
            if server == self.server_name:
                out.append(self.own_document())
                continue
            minimum = max(key_ids.values(), default=0)
            if server not in self._docs and self.db is not None and server not in self._loaded:
                self._loaded.add(server)
                await self._load(self.db, server)
            doc = self._docs.get(server)
            stale = doc is None or doc.get("valid_until_ts", 0) < max(minimum, now) or any(
                kid and kid not in doc.get("verify_keys", {}) and kid not in doc.get("old_verify_keys", {})
                for kid in key_ids)
            if stale and self.client is not None:
                try:
                    await self._refresh(server, next(iter(key_ids), ""), minimum)
                except Exception as exc:  # serve what we have
                    log.info("notary refresh of %s failed: %s", server, exc)
                doc = self._docs.get(server)
            if doc is not None:
                out.append(notary_sign(doc, self.server_name, self.signing_key))
        return out
