"""Process resources at start-up and when they run out: open files (issue 20, R2).

Every client connection is a descriptor. The soft RLIMIT_NOFILE is often 1,024 while the hard
limit allows far more, so the hub raises its soft limit to the hard one as most servers do (under
the shipped systemd unit LimitNOFILE sets both, and setrlimit is filtered: nothing to do there).
When descriptors do run out, asyncio's accept loop reports every failed accept() through the
loop's exception handler with a traceback; here that is one line a minute instead.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

from matrix_core.log_limit import LogLimiter

log = logging.getLogger(__name__)

# Linux's default fs.nr_open: the most a soft limit can be raised to when the hard one is unlimited.
NR_OPEN_DEFAULT = 1_048_576
_OUT_OF = {errno.EMFILE: "file descriptors (EMFILE)", errno.ENFILE: "system file descriptors (ENFILE)",
           errno.ENOBUFS: "socket buffers (ENOBUFS)", errno.ENOMEM: "memory (ENOMEM)"}


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a seccomp filter: LimitNOFILE= is the way
            log.info("could not raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft


def install_loop_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    """Out-of-resource errors (a full descriptor table on accept()) as one line a minute."""
    limiter = LogLimiter(60.0)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF:
            limiter.log(log, logging.ERROR, str(exc.errno),
                        "out of %s: %s; new connections wait until some close (open files limit %d)",
                        _OUT_OF[exc.errno], context.get("message", exc), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
