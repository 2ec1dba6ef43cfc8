"""matrix_core.log_limit as the CoAP front end uses it: one line per kind per interval, the rest
counted, and a filter limiting another library's (aiocoap's) lines (pure, fake clock)."""
from __future__ import annotations

import logging

import pytest

from matrix_core.log_limit import LogLimiter


def test_one_line_per_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(60, clock=lambda: now[0])
    logger = logging.getLogger("t.limit")
    with caplog.at_level(logging.WARNING, "t.limit"):
        assert limiter.log(logger, logging.WARNING, "a", "bad %s", "x")
        assert not any(limiter.log(logger, logging.WARNING, "a", "bad %s", "x") for _ in range(99))
        assert limiter.log(logger, logging.WARNING, "b", "other")  # another kind has its own allowance
        now[0] = 61.0
        assert limiter.log(logger, logging.WARNING, "a", "bad %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "bad x", "other", "bad y (99 more since the last line)"]


def test_filter_limits_another_loggers_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(60, clock=lambda: now[0])
    other = logging.getLogger("t.aiocoap")
    other.addFilter(limiter.filter("Ignoring", "ign"))
    with caplog.at_level(logging.INFO, "t.aiocoap"):
        for _ in range(10):
            other.warning("Ignoring unparsable message from %s", "x")
        other.info("something else")
        now[0] = 61.0
        other.warning("Ignoring unparsable message from %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "Ignoring unparsable message from x", "something else",
        "Ignoring unparsable message from y (9 more since the last line)"]
