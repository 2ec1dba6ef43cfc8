"""Application service registrations (matrix_core/appservice_rules.py), pure: parsing, the checks
that stop a hub from starting with a bad set of files, namespace matching and interest."""
from __future__ import annotations

import pytest

from matrix_core.appservice_rules import (RegistrationError, backoff_s, check_registrations, interested,
                                          parse_registration, parse_registration_yaml)

REG = """
id: telegram
url: http://127.0.0.1:29317
as_token: as_secret
hs_token: hs_secret
sender_localpart: telegrambot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: '@telegram_.*:localhost'
  aliases:
    - exclusive: true
      regex: '#telegram_.*:localhost'
  rooms: []
"""


def reg(**changes: object) -> dict:
    import yaml

    data = yaml.safe_load(REG)
    data.update(changes)
    return data


def test_a_synapse_registration_file_parses() -> None:
    r = parse_registration_yaml(REG, "tg.yaml")
    assert (r.id, r.url, r.sender("localhost"), r.rate_limited, r.receive_ephemeral) == \
        ("telegram", "http://127.0.0.1:29317", "@telegrambot:localhost", False, False)
    assert r.is_user_in_namespace("@telegram_42:localhost", "localhost")
    assert r.is_user_in_namespace("@telegrambot:localhost", "localhost")
    assert not r.is_user_in_namespace("@alice:localhost", "localhost")
    assert r.is_exclusive_alias("#telegram_chat:localhost") and not r.is_exclusive_alias("#home:localhost")
    assert parse_registration(reg(**{"de.sorunome.msc2409.push_ephemeral": True}), "x").receive_ephemeral


@pytest.mark.parametrize("changes, words", [
    ({"namespaces": {"users": [{"exclusive": True, "regex": "@tg_(.*"}]}}, "not a valid regular expression"),
    ({"as_token": None}, "'as_token' is required"),
    ({"url": "ftp://x"}, "'url' must be an http\\(s\\) URL"),
    ({"sender_localpart": "Bad Name"}, "not a valid user localpart"),
    ({"namespaces": {"people": []}}, "unknown namespace kind"),
    ({"hs_token": "as_secret"}, "must differ"),
    ({"rate_limited": "no"}, "'rate_limited' must be true or false"),
])
def test_a_bad_registration_is_refused_naming_the_problem(changes: dict, words: str) -> None:
    with pytest.raises(RegistrationError, match=words) as info:
        parse_registration(reg(**changes), "tg.yaml")
    assert "tg.yaml" in str(info.value)


def test_duplicates_and_overlapping_exclusive_namespaces_are_refused() -> None:
    a = parse_registration(reg(), "a.yaml")
    other = dict(id="other", as_token="t2", hs_token="h2", sender_localpart="otherbot")
    with pytest.raises(RegistrationError, match="id 'telegram' is already used"):
        check_registrations([a, parse_registration(reg(as_token="t2", hs_token="h2"), "b.yaml")], "localhost")
    with pytest.raises(RegistrationError, match="uses a token"):
        check_registrations([a, parse_registration(reg(id="b", as_token="as_secret", hs_token="h2",
                                                       sender_localpart="b"), "b.yaml")], "localhost")
    overlapping = reg(**other, namespaces={"users": [{"exclusive": False, "regex": "@telegram_bridge_.*"}]})
    with pytest.raises(RegistrationError, match="overlaps the exclusive namespace '@telegram_.\\*:localhost'"):
        check_registrations([a, parse_registration(overlapping, "b.yaml")], "localhost")
    same_prefix_other_server = reg(**other, namespaces={"users": [{"exclusive": True, "regex": "^@telegram_.*:elsewhere$"}]})
    assert check_registrations([parse_registration(reg(namespaces={"users": [
        {"exclusive": True, "regex": "^@telegram_.*:localhost$"}]}), "a.yaml"),
        parse_registration(same_prefix_other_server, "b.yaml")], "localhost")
    apart = reg(**other, namespaces={"users": [{"exclusive": True, "regex": "@zigbee_.*:localhost"}]})
    assert len(check_registrations([a, parse_registration(apart, "b.yaml")], "localhost")) == 2


def test_interest_sender_member_room_alias() -> None:
    r = parse_registration(reg(namespaces={"users": [{"exclusive": True, "regex": "@telegram_.*"}],
                                           "rooms": [{"exclusive": False, "regex": "!bridged.*"}]}), "a")
    msg = {"type": "m.room.message", "sender": "@alice:localhost", "room_id": "!kitchen:localhost"}
    assert not interested(r, msg, "localhost", set(), set())
    assert interested(r, msg, "localhost", {"!kitchen:localhost"}, set())  # one of its users is in it
    assert interested(r, msg, "localhost", set(), {"!kitchen:localhost"})  # an alias of its namespace
    assert interested(r, {**msg, "sender": "@telegram_1:localhost"}, "localhost", set(), set())
    assert interested(r, {**msg, "room_id": "!bridged1:localhost"}, "localhost", set(), set())
    invite = {"type": "m.room.member", "sender": "@alice:localhost", "state_key": "@telegram_2:localhost",
              "room_id": "!x:localhost", "content": {"membership": "invite"}}
    assert interested(r, invite, "localhost", set(), set())


def test_backoff_starts_quick_and_is_bounded() -> None:
    assert backoff_s(1) == 0.25 and backoff_s(2) == 0.5
    assert backoff_s(1000) == 60.0


def test_msc3202_flag_and_who_is_consumed() -> None:
    """`org.matrix.msc3202: true` makes an encrypted AS: its exclusive users' and its bot's
    to-device messages are its (taken off /sync); without the flag nobody's are."""
    plain = parse_registration(reg(receive_ephemeral=True), "tg.yaml")
    encrypted = parse_registration(reg(**{"org.matrix.msc3202": True}), "tg.yaml")
    assert (plain.msc3202, encrypted.msc3202) == (False, True)
    assert not plain.consumes_to_device("@telegram_1:localhost", "localhost")
    assert encrypted.consumes_to_device("@telegram_1:localhost", "localhost")
    assert encrypted.consumes_to_device("@telegrambot:localhost", "localhost")
    assert not encrypted.consumes_to_device("@carol:localhost", "localhost")
    with pytest.raises(RegistrationError, match="org.matrix.msc3202"):
        parse_registration(reg(**{"org.matrix.msc3202": "yes"}), "tg.yaml")


def test_a_transaction_carries_the_msc2409_and_msc3202_parts_under_synapses_keys() -> None:
    from matrix_core.appservice_rules import Extensions, key_counts, to_device_entry, transaction_body

    assert transaction_body([]) == {"events": []}  # nothing empty is sent
    message = {"type": "m.room.encrypted", "sender": "@carol:localhost", "content": {"ciphertext": "x"}}
    entry = to_device_entry("@telegram_1:localhost", "DEV", message)
    assert entry == {**message, "to_user_id": "@telegram_1:localhost", "to_device_id": "DEV"}
    otk, fallback = key_counts([("@telegram_1:localhost", "DEV"), ("@telegram_1:localhost", "DEV")],
                               lambda u, d: {"signed_curve25519": 3}, lambda u, d: ["signed_curve25519"])
    body = transaction_body([], [{"type": "m.typing"}], Extensions(
        ephemeral=[{"type": "m.presence"}], to_device=[entry], device_lists=(["@carol:localhost"], []),
        otk_counts=otk, fallback_types=fallback))
    assert body["de.sorunome.msc2409.to_device"] == [entry]
    assert body["ephemeral"] == body["de.sorunome.msc2409.ephemeral"] == [{"type": "m.typing"}, {"type": "m.presence"}]
    assert body["org.matrix.msc3202.device_lists"] == {"changed": ["@carol:localhost"], "left": []}
    assert body["org.matrix.msc3202.device_one_time_keys_count"] == \
        {"@telegram_1:localhost": {"DEV": {"signed_curve25519": 3}}}
    assert body["org.matrix.msc3202.device_unused_fallback_key_types"] == \
        {"@telegram_1:localhost": {"DEV": ["signed_curve25519"]}}


def test_device_list_summary_for_an_as() -> None:
    """Broadcast rows count for users sharing a room with the AS's users (or its own users);
    a row for one recipient counts when the recipient is the AS's; the newest word wins."""
    from matrix_core.appservice_rules import device_list_summary

    owns = lambda u: u.startswith("@telegram_")  # noqa: E731
    shares = {"@carol:localhost"}.__contains__
    rows = [("@carol:localhost", None, "changed"), ("@dave:localhost", None, "changed"),
            ("@telegram_1:localhost", None, "changed"),
            ("@erin:localhost", "@telegram_1:localhost", "changed"), ("@erin:localhost", "@telegram_1:localhost", "left"),
            ("@frank:localhost", "@bob:localhost", "left")]
    assert device_list_summary(rows, shares, owns) == (["@carol:localhost", "@telegram_1:localhost"],
                                                       ["@erin:localhost"])


def test_a_user_who_left_one_of_the_as_users_but_shares_a_room_with_another_is_not_left() -> None:
    """The device-list `left` rows are per recipient: erin left the room she shared with
    telegram_1 but is still in one with telegram_2, so the AS (which runs both) must keep
    tracking her devices (mautrix would stop encrypting for her)."""
    from matrix_core.appservice_rules import device_list_summary

    owns = lambda u: u.startswith("@telegram_")  # noqa: E731
    rows = [("@erin:localhost", "@telegram_1:localhost", "left")]
    assert device_list_summary(rows, {"@erin:localhost"}.__contains__, owns) == ([], [])
    assert device_list_summary(rows, set().__contains__, owns) == ([], ["@erin:localhost"])
