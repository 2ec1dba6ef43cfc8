"""EDUs arriving in /send transactions: `m.typing` and `m.receipt` go to the typing and receipts
services; `m.direct_to_device`, `m.device_list_update` and `m.signing_key_update` to E2EE
federation (federation/e2e.py); anything else is ignored (presence).

An EDU is advisory: a malformed one, or one about a user of another server or a user not in the
room, is dropped with one log line a minute per origin and kind, and never fails its
transaction (the PDUs beside it are answered as usual). Receipts are kept before the
transaction is answered; typing lives in memory.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..ephemeral import MAX_EDUS_PER_TRANSACTION, BadEDU, parse_receipt_edu, parse_typing_edu
from ..log_limit import LogLimiter

if TYPE_CHECKING:
    from ..homeserver import Homeserver

log = logging.getLogger(__name__)

_dropped_log = LogLimiter(60.0)


def _drop(origin: str, kind: str, reason: str) -> None:
    _dropped_log.log(log, logging.INFO, f"{origin} {kind}", "dropping an %s EDU from %s: %s", kind, origin, reason)


async def handle_edus(hs: Homeserver, origin: str, edus: Any) -> None:
    """The transaction's `edus` list (absent: none); never raises."""
    if edus is None:
        return
    if not isinstance(edus, list):
        _drop(origin, "edus", "'edus' is not a list")
        return
    if len(edus) > MAX_EDUS_PER_TRANSACTION:
        _drop(origin, "edus", f"{len(edus)} EDUs, more than {MAX_EDUS_PER_TRANSACTION}: the rest ignored")
        edus = edus[:MAX_EDUS_PER_TRANSACTION]
    for edu in edus:
        kind = edu.get("edu_type") if isinstance(edu, dict) else None
        try:
            if kind == "m.typing":
                await hs.typing.remote_typing(origin, parse_typing_edu(edu.get("content")))
            elif kind == "m.receipt":
                receipts = parse_receipt_edu(edu.get("content"))
                await hs.receipts.remote_receipts(origin, receipts,
                                                  lambda reason: _drop(origin, "m.receipt", reason))
            elif kind == "m.direct_to_device":
                await hs.e2e_federation.on_direct_to_device(origin, edu.get("content"))
            elif kind == "m.device_list_update":
                await hs.e2e_federation.on_device_list_update(origin, edu.get("content"))
            elif kind == "m.signing_key_update":
                await hs.e2e_federation.on_signing_key_update(origin, edu.get("content"))
        except (BadEDU, ValueError) as exc:
            _drop(origin, str(kind), str(exc))
        except Exception as exc:  # a storage error, say: the EDU is lost, the transaction is not
            _drop(origin, str(kind), f"not handled: {exc!r}")
