"""key_backup_rules: the spec's replace rule and the KeyBackupData shape (pure)."""
from __future__ import annotations

import pytest

from matrix_core import errors
from matrix_core.key_backup_rules import KeyBackupData, check_key_data, parse_version, should_replace


def k(first: int, forwarded: int, verified: bool) -> KeyBackupData:
    return KeyBackupData(first, forwarded, verified, {})


@pytest.mark.parametrize("new, old, replace", [
    (k(5, 5, False), None, True),
    (k(9, 9, True), k(0, 0, False), True),        # verified wins over everything
    (k(0, 0, False), k(9, 9, True), False),
    (k(1, 9, True), k(2, 0, True), True),          # then the lower first_message_index
    (k(3, 0, False), k(2, 9, False), False),
    (k(2, 1, False), k(2, 2, False), True),        # then the lower forwarded_count
    (k(2, 2, False), k(2, 1, False), False),
    (k(2, 2, True), k(2, 2, True), False),         # a full tie keeps the stored copy
])
def test_should_replace(new: KeyBackupData, old: KeyBackupData | None, replace: bool) -> None:
    assert should_replace(new, old) is replace


@pytest.mark.parametrize("data", [
    None, [], {"first_message_index": 0, "forwarded_count": 0, "is_verified": False},
    {"first_message_index": -1, "forwarded_count": 0, "is_verified": False, "session_data": {}},
    {"first_message_index": True, "forwarded_count": 0, "is_verified": False, "session_data": {}},
    {"first_message_index": 0, "forwarded_count": 0, "is_verified": 0, "session_data": {}},
])
def test_bad_key_data(data: object) -> None:
    with pytest.raises(errors.MatrixError) as err:
        check_key_data(data, "x")
    assert err.value.errcode == "M_BAD_JSON"


def test_versions() -> None:
    assert parse_version("12") == 12
    assert parse_version("1x") is None and parse_version("") is None and parse_version("-1") is None
    assert parse_version("9" * 40) is None
