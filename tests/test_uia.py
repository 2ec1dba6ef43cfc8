"""The user-interactive auth state machine (matrix_core/uia.py), pure: no sockets, no clock."""
from __future__ import annotations

import pytest

from matrix_core import errors, uia

OP = uia.operation("DELETE", ["devices", "PHONE"])


def session() -> uia.Session:
    return uia.new_session("S1", "@a:hub", OP, now_ms=1_000)


def test_no_auth_is_the_challenge_without_an_error() -> None:
    answer = uia.step(session(), None, "@a:hub", OP)
    assert isinstance(answer, uia.AuthRequired) and answer.status == 401
    assert answer.to_json() == {"flows": [{"stages": ["m.login.password"]}], "params": {}, "session": "S1",
                                "completed": []}
    # a dict with only the session asks again too
    assert isinstance(uia.step(session(), uia.parse_auth({"session": "S1"}), "@a:hub", OP), uia.AuthRequired)


def test_password_attempt_is_handed_to_the_caller_then_completes() -> None:
    auth = uia.parse_auth({"type": "m.login.password", "session": "S1", "password": "pw",
                           "identifier": {"type": "m.id.user", "user": "a"}})
    action = uia.step(session(), auth, "@a:hub", OP)
    assert action == uia.CheckPassword(session(), "a", "pw")
    done = uia.completed(action.session, uia.PASSWORD)
    assert uia.done(done) and not uia.done(session())
    wrong = uia.wrong_password(session()).to_json()
    assert wrong["errcode"] == "M_FORBIDDEN" and wrong["session"] == "S1" and wrong["flows"]
    legacy = uia.parse_auth({"type": "m.login.password", "user": "@a:hub", "password": "pw"})
    assert legacy is not None and legacy.user == "@a:hub" and legacy.session_id is None


def test_unknown_stage_is_a_401_with_m_unrecognized() -> None:
    answer = uia.step(session(), uia.parse_auth({"type": "m.login.dummy"}), "@a:hub", OP)
    assert isinstance(answer, uia.AuthRequired) and answer.to_json()["errcode"] == "M_UNRECOGNIZED"


@pytest.mark.parametrize("auth", ["x", 1, [], {"type": 1}, {"session": 5},
                                  {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "a"}},
                                  {"type": "m.login.password", "password": "pw"},
                                  {"type": "m.login.password", "password": "pw", "identifier": {"type": "m.id.phone"}}])
def test_malformed_auth_is_bad_json(auth: object) -> None:
    with pytest.raises(errors.MatrixError) as caught:
        uia.parse_auth(auth)
    assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")


def test_a_session_serves_only_its_user_and_operation_until_it_expires() -> None:
    for user, op in (("@b:hub", OP), ("@a:hub", uia.operation("POST", ["account", "deactivate"]))):
        with pytest.raises(errors.MatrixError) as caught:
            uia.step(session(), None, user, op)
        assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert not uia.expired(session(), 1_000 + uia.SESSION_LIFETIME_MS - 1)
    assert uia.expired(session(), 1_000 + uia.SESSION_LIFETIME_MS)
