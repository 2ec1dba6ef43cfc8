"""The broker's sessions and rules as the MQTT store keeps them (matrix_core/store/mqtt.py, rows
of plain values): rows in, broker objects out, and the writes the broker queues on the core's
group commit. A session is read when its write runs (in the writer's transaction), as it is
then, so a save queued behind others never writes an older state over a newer one."""
from __future__ import annotations

from matrix_core.store import mqtt as mqtt_store
from matrix_core.store.database import WriteFn
from matrix_core.store.mqtt import SessionRow, SubscriptionRow, session_key

from .packets import Subscription
from .routing import Rule
from .session import SessionState

__all__ = ["session_key", "session_of", "save_session", "save_cursor", "delete_session", "add_incoming_qos2",
           "remove_incoming_qos2", "rules_of"]


def session_row(key: str, session: SessionState, disconnected_ts: int | None) -> SessionRow:
    ids = session.subscription_ids
    subscriptions = [SubscriptionRow(s.topic_filter, s.qos, s.no_local, s.retain_as_published, s.retain_handling,
                                     ids.get(s.topic_filter)) for s in session.subscriptions.values()]
    return SessionRow(key, session.user_id, session.protocol_level, session.expiry_interval, session.cursor(),
                      disconnected_ts, subscriptions, session.incoming_qos2)


def save_session(key: str, session: SessionState, disconnected: bool = False) -> WriteFn:
    """The write saving `session`; `disconnected`: stamped with the time of the write."""
    if disconnected:
        return lambda c: mqtt_store.save_session(c, session_row(key, session, mqtt_store.now_ms()))
    return lambda c: mqtt_store.save_session(c, session_row(key, session, None))


def save_cursor(key: str, cursor: int) -> WriteFn:
    return lambda c: mqtt_store.save_cursor(c, key, cursor)


def delete_session(key: str) -> WriteFn:
    return lambda c: mqtt_store.delete_session(c, key)


def add_incoming_qos2(key: str, packet_id: int) -> WriteFn:
    return lambda c: mqtt_store.add_incoming_qos2(c, key, packet_id)


def remove_incoming_qos2(key: str, packet_id: int) -> WriteFn:
    return lambda c: mqtt_store.remove_incoming_qos2(c, key, packet_id)


def session_of(row: SessionRow, max_queued: int) -> SessionState:
    """A stored session as the broker holds it (its queue is read back from the rooms' history)."""
    session = SessionState(row.client_id, row.user_id, row.protocol_level, row.expiry_interval, max_queued,
                           seen_upto=row.cursor)
    for s in row.subscriptions:
        session.subscriptions[s.topic_filter] = Subscription(s.topic_filter, s.qos, s.no_local,
                                                             s.retain_as_published, s.retain_handling)
        if s.subscription_id is not None:
            session.subscription_ids[s.topic_filter] = s.subscription_id
    session.incoming_qos2.update(row.incoming_qos2)
    return session


def rules_of(pairs: list[tuple[str, str]]) -> list[Rule]:
    """The hub admin's rules (the CLI's `mqtt map`)."""
    return [Rule(topic_filter, room_id, True) for topic_filter, room_id in pairs]
