"""The pure shape checks of uploaded E2EE keys and key requests (matrix_core/e2e_rules.py)."""
from __future__ import annotations

from typing import Any

import pytest

from matrix_core import e2e_rules as rules
from matrix_core.errors import MatrixError

U, D = "@u:hub", "DEV"


def device_keys(**change: Any) -> dict[str, Any]:
    keys = {"user_id": U, "device_id": D, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{D}": "AAAA", f"ed25519:{D}": "BBBB"},
            "signatures": {U: {f"ed25519:{D}": "c2ln"}}}
    keys.update(change)
    return keys


def errcode(fn: Any, *args: Any) -> str:
    with pytest.raises(MatrixError) as err:
        fn(*args)
    return err.value.errcode


def test_good_device_keys_pass_unchanged() -> None:
    keys = device_keys(unsigned={"device_display_name": "x"})
    assert rules.check_device_keys(keys, U, D) is keys


@pytest.mark.parametrize("change,code", [
    ({"user_id": "@v:hub"}, "M_INVALID_PARAM"),
    ({"device_id": "OTHER"}, "M_INVALID_PARAM"),
    ({"algorithms": "x"}, "M_BAD_JSON"),
    ({"keys": {}}, "M_BAD_JSON"),
    ({"keys": {"curve25519:OTHER": "AAAA"}}, "M_BAD_JSON"),
    ({"keys": {f"curve25519:{D}": 1}}, "M_BAD_JSON"),
    ({"signatures": {U: {}}}, "M_BAD_JSON"),
    ({"signatures": {U: {"nocolon": "AAAA"}}}, "M_BAD_JSON"),
    ({"signatures": {"bad": {f"ed25519:{D}": "AAAA"}}}, "M_BAD_JSON"),
    ({"unsigned": []}, "M_BAD_JSON"),
])
def test_bad_device_keys(change: dict[str, Any], code: str) -> None:
    assert errcode(rules.check_device_keys, device_keys(**change), U, D) == code


def test_one_time_keys_shapes() -> None:
    ok = {"curve25519:A": "AAAA", "signed_curve25519:B": {"key": "BBBB", "signatures": {U: {"ed25519:D": "AA"}}}}
    assert rules.check_one_time_keys(ok) is ok
    assert errcode(rules.check_one_time_keys, {"signed_curve25519:B": {"key": "B B"}}) == "M_BAD_JSON"
    assert errcode(rules.check_one_time_keys, {"A": "AAAA"}) == "M_BAD_JSON"
    too_many = {f"signed_curve25519:{i}": "AAAA" for i in range(rules.MAX_KEYS_PER_UPLOAD + 1)}
    assert errcode(rules.check_one_time_keys, too_many) == "M_TOO_LARGE"


def test_fallback_keys_one_per_algorithm_and_msc2732_name() -> None:
    assert rules.fallback_keys_of({}) is None
    assert rules.fallback_keys_of({"org.matrix.msc2732.fallback_keys": {"signed_curve25519:F": "AAAA"}})
    two = {"fallback_keys": {"signed_curve25519:F": "AAAA", "signed_curve25519:G": "BBBB"}}
    assert errcode(rules.fallback_keys_of, two) == "M_INVALID_PARAM"


def test_query_claim_and_to_device_requests() -> None:
    assert rules.check_query({"device_keys": {U: []}}) == {U: []}
    assert errcode(rules.check_query, {"device_keys": {U: "all"}}) == "M_BAD_JSON"
    assert errcode(rules.check_query, {"device_keys": {"nobody": []}}) == "M_INVALID_PARAM"
    assert errcode(rules.check_query, {}) == "M_BAD_JSON"
    assert rules.check_claim({"one_time_keys": {U: {D: "signed_curve25519"}}})
    assert errcode(rules.check_claim, {"one_time_keys": {U: {D: 5}}}) == "M_BAD_JSON"
    assert rules.check_to_device({"messages": {U: {"*": {}}}})
    assert errcode(rules.check_to_device, {"messages": {U: {D: []}}}) == "M_BAD_JSON"
    assert errcode(rules.check_to_device, {"messages": {U: {"": {}}}}) == "M_INVALID_PARAM"
