"""cross_signing_rules (pure): the shape of a cross-signing key and the master key's signature."""
from __future__ import annotations

from typing import Any

import pytest

from matrix_core import cross_signing_rules as rules
from matrix_core import errors
from tests.support.e2ee_keys import Key, key_set

USER = "@a:hub"


def test_a_good_key_set() -> None:
    master, ssk, _, body = key_set(USER)
    key = rules.check_key(body["master_key"], USER, rules.MASTER, "master_key")
    assert rules.key_id(key) == master.kid and rules.public_key(key) == master.pub
    rules.check_signed_by_master(body["self_signing_key"], key, "self_signing_key")
    assert rules.same_key(body["self_signing_key"], ssk.public(USER, "self_signing"))


@pytest.mark.parametrize("key, errcode", [
    ("x", "M_BAD_JSON"),
    ({"user_id": "@b:hub", "usage": ["master"], "keys": {}}, "M_INVALID_PARAM"),
    ({"user_id": USER, "usage": "master", "keys": {}}, "M_BAD_JSON"),
    ({"user_id": USER, "usage": ["master"], "keys": {}}, "M_INVALID_PARAM"),
    ({"user_id": USER, "usage": ["master"], "keys": {"curve25519:AAAA": "AAAA"}}, "M_INVALID_PARAM"),
    ({"user_id": USER, "usage": ["master"], "keys": {"ed25519:AAAA": "AAAA"}}, "M_INVALID_PARAM"),  # not 32 bytes
    ({**Key().public(USER, "master"), "signatures": {USER: {"ed25519:x": 5}}}, "M_BAD_JSON"),
    ({**Key().public(USER, "master"), "signatures": []}, "M_BAD_JSON"),
])
def test_bad_keys(key: Any, errcode: str) -> None:
    with pytest.raises(errors.MatrixError) as err:
        rules.check_key(key, USER, rules.MASTER, "master_key")
    assert err.value.errcode == errcode


def test_signature_by_another_key_is_refused() -> None:
    _, _, _, body = key_set(USER)
    other_master = Key().public(USER, "master")
    with pytest.raises(errors.MatrixError) as err:
        rules.check_signed_by_master(body["self_signing_key"], other_master, "self_signing_key")
    assert err.value.errcode == "M_INVALID_SIGNATURE" and err.value.status == 400


def test_merge_signatures_keeps_the_original() -> None:
    obj = {"keys": {}, "signatures": {USER: {"a": "1"}}}
    merged = rules.merge_signatures(obj, {USER: {"b": "2"}, "@c:hub": {"c": "3"}})
    assert merged["signatures"] == {USER: {"a": "1", "b": "2"}, "@c:hub": {"c": "3"}}
    assert obj["signatures"] == {USER: {"a": "1"}}
