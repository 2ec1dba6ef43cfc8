"""The /sync token: one position per stream (matrix_core/sync_token.py). Pure."""
from __future__ import annotations

import pytest

from matrix_core.errors import MatrixError
from matrix_core.sync_token import SIDE_STREAMS, STREAM_NAMES, SyncToken, parse_sync_token


def test_round_trip_keeps_every_stream() -> None:
    token = SyncToken(120, {name: i + 1 for i, name in enumerate(SIDE_STREAMS)})
    text = token.format()
    assert text == "s120_" + "_".join(str(i + 1) for i in range(len(SIDE_STREAMS)))
    assert parse_sync_token(text) == token
    assert [parse_sync_token(text).position(n) for n in STREAM_NAMES] == list(range(120, 121)) + list(
        range(1, len(SIDE_STREAMS) + 1))


def test_an_older_shorter_token_reads_missing_streams_as_zero() -> None:
    token = parse_sync_token("s42")
    assert token is not None and token.events == 42
    assert all(token.position(name) == 0 for name in SIDE_STREAMS)
    assert parse_sync_token("s42_3").position("account_data") == 3


@pytest.mark.parametrize("raw", ["", "s", "x12", "s12_", "s1__2", "s1_-2", "s1_x", "s" + "_1" * 20,
                                 "s1" + "_1" * (len(SIDE_STREAMS) + 1), f"s{2**70}", "s１"])
def test_anything_we_did_not_hand_out_is_invalid_param(raw: str) -> None:
    with pytest.raises(MatrixError) as caught:
        parse_sync_token(raw)
    assert caught.value.errcode == "M_INVALID_PARAM"
