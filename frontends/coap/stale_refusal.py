"""Keep one dead device from cancelling another device's observation (aiocoap 0.4.17, udp6).

Why: when a device that was observing goes away without a word, the next notification to it
draws an ICMP "port unreachable". Linux reports that asynchronously: once in the socket's error
queue (aiocoap reads it there, with the right address) and once more as ECONNREFUSED from the
*next* sendmsg() on the socket, whatever its destination. aiocoap blames that second report on
the remote it was sending to, and ends every exchange with that innocent device (its
observation is silently dropped). A datagram sendmsg() on an unconnected UDP socket never fails
with ECONNREFUSED for its own destination, so such an error is stale: it is ignored here and the
datagram that was not sent is sent again.
"""
from __future__ import annotations

import errno
import logging
from typing import Any

log = logging.getLogger(__name__)


def guard(context: Any) -> int:
    """Install the guard on every udp6 message interface of an aiocoap server context.

    Returns how many interfaces were guarded (reaches into aiocoap's private layering:
    Context.request_interfaces -> TokenManager.token_interface -> MessageManager.message_interface).
    """
    guarded = 0
    for token_manager in getattr(context, "request_interfaces", []):
        message_manager = getattr(token_manager, "token_interface", None)
        interface = getattr(message_manager, "message_interface", None)
        if interface is None or not hasattr(interface, "_remote_being_sent_to"):
            continue
        _install(interface)
        guarded += 1
    return guarded


def _install(interface: Any) -> None:
    original_send = interface.send
    original_error_received = interface.error_received
    state = {"stale": False}

    def error_received(exc: Exception) -> None:
        if getattr(exc, "errno", None) == errno.ECONNREFUSED and interface._remote_being_sent_to.get() is not None:
            state["stale"] = True  # someone else's refusal, reported on our sendmsg()
            return
        original_error_received(exc)

    def send(message: Any) -> None:
        state["stale"] = False
        original_send(message)
        if state["stale"]:
            state["stale"] = False
            log.debug("stale ECONNREFUSED on a send to %r: sending again", message.remote)
            original_send(message)

    interface.error_received = error_received
    interface.send = send
