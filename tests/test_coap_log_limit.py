"""bridges.coap.log_limit: one line per kind per interval, the rest counted (pure, fake clock)."""
from __future__ import annotations

import logging

import pytest

from bridges.coap.log_limit import LogLimiter


def test_one_line_per_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("t.limit"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.limit"):
        assert limiter.log("a", "bad %s", "x")
        assert not any(limiter.log("a", "bad %s", "x") for _ in range(99))
        assert limiter.log("b", "other")  # another kind has its own allowance
        now[0] = 61.0
        assert limiter.log("a", "bad %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "bad x", "other", "bad y (and 99 more like it in the last 60 s)"]


def test_filter_limits_another_loggers_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("t.limit2"), clock=lambda: now[0])
    other = logging.getLogger("t.aiocoap")
    other.addFilter(limiter.filter("Ignoring", "ign"))
    with caplog.at_level(logging.INFO, "t.aiocoap"):
        for _ in range(10):
            other.warning("Ignoring unparsable message from %s", "x")
        other.info("something else")
    assert [r.getMessage() for r in caplog.records] == ["Ignoring unparsable message from x", "something else"]
