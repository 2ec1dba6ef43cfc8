"""A short way through aiocoap for the commonest request: a device posting one reading.

aiocoap runs every request through its general machinery (a Pipe, the resource's Observe and
Block2 layers, a task named after the request's repr), which costs more per request than storing
the event does. A request with no Observe and no Block options, whose method writes (POST/PUT),
needs none of it: its answer is a few bytes ({"event_id": ...} or an error). Those go straight
from aiocoap's token layer to the resource's render() and back; everything else (GETs, Observe,
block-wise) takes aiocoap's full path. Deduplication and ACK/retransmission stay aiocoap's: this
sits above its message layer.

Over plain UDP most such requests never get here: the hub's own message layer
(``message_layer.py``) answers them below aiocoap. This lane still serves coaps (DTLS) and
the UDP writes that carry an option the message layer leaves to aiocoap (No-Response, Size1,
If-Match, ...).

Reaches into aiocoap's private layering (Context.request_interfaces -> TokenManager), like
stale_refusal.py; pinned by the aiocoap version in pyproject.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

log = logging.getLogger(__name__)

_WRITES = (Code.POST, Code.PUT)


def eligible(request: aiocoap.Message) -> bool:
    """A one-shot write: no Observe, no Block1/Block2 (the body is all in this datagram)."""
    opt = request.opt
    return request.code in _WRITES and opt.observe is None and opt.block1 is None and opt.block2 is None


def install(context: Any, resource: Any) -> int:
    """Put the fast lane in front of each token manager of `context`; returns how many."""
    installed = 0
    for token_manager in getattr(context, "request_interfaces", []):
        if not hasattr(token_manager, "process_request") or not hasattr(token_manager, "token_interface"):
            continue
        _wrap(token_manager, resource)
        installed += 1
    return installed


def _wrap(token_manager: Any, resource: Any) -> None:
    original = token_manager.process_request
    pending: set[asyncio.Task[None]] = set()

    def process_request(request: aiocoap.Message) -> None:
        if not eligible(request):
            original(request)
            return
        task = asyncio.get_running_loop().create_task(_answer(token_manager, resource, request))
        pending.add(task)
        task.add_done_callback(pending.discard)

    token_manager.process_request = process_request


async def _answer(token_manager: Any, resource: Any, request: aiocoap.Message) -> None:
    try:
        response = await resource.render(request)
    except Exception:  # render() maps every error itself; this is a last resort, never a crash
        log.exception("fast lane: rendering a CoAP %s failed", request.code)
        response = aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)
    response.token = request.token
    response.remote = request.remote.as_response_address()
    response.request = request
    token_manager.token_interface.send_message(response, lambda: None)
