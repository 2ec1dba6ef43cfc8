"""Who a CONNECT is: the Matrix account behind its username and password (or access token),
or the anonymous account when the hub allows it; else the MQTT 5 reason code refusing it."""
from __future__ import annotations

import logging

from matrix_core import errors
from matrix_core.service.accounts import Accounts, Requester

from .constants import ReasonCode
from .packets import Connect
from .settings import BrokerSettings

log = logging.getLogger("frontends.mqtt")


async def authenticate(accounts: Accounts, settings: BrokerSettings, connect: Connect, peer: str
                       ) -> Requester | int:
    """The Matrix account behind a CONNECT, or the MQTT 5 reason code refusing it."""
    if connect.username is None:
        if not settings.allow_anonymous or connect.password is not None:
            return ReasonCode.NOT_AUTHORIZED
        user_id = accounts.local_user_id(settings.anonymous_user)
        if not await accounts.user_exists(user_id):
            log.warning("anonymous MQTT client refused: account %s does not exist", user_id)
            return ReasonCode.NOT_AUTHORIZED
        return Requester(user_id, f"mqtt:{connect.client_id}", False, "")
    if connect.password is None:
        return ReasonCode.BAD_USER_NAME_OR_PASSWORD
    try:
        password = connect.password.decode("utf-8")
    except UnicodeDecodeError:
        return ReasonCode.BAD_USER_NAME_OR_PASSWORD
    user_id = accounts.local_user_id(connect.username)
    try:
        requester = await accounts.authenticate(password)
    except errors.MatrixError:
        requester = None
    if requester is not None:
        if requester.user_id == user_id:
            return requester
    try:
        found = await accounts.check_credentials(connect.username, password, peer)
    except errors.MatrixError as err:
        if err.errcode != "M_LIMIT_EXCEEDED":
            raise
        # The core's login throttle: "try later", not "wrong password" (a client may drop
        # a password it was told is wrong). MQTT 3.1.1 has no such code: Server unavailable.
        return ReasonCode.QUOTA_EXCEEDED
    if found is None:
        return ReasonCode.BAD_USER_NAME_OR_PASSWORD
    return Requester(found, f"mqtt:{connect.client_id}", False, "")
