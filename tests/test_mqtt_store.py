"""The MQTT broker's store (matrix_core/store/mqtt.py): its schema registered as its own component
under the name and versions databases already carry, and its typed rows round-tripping."""
from __future__ import annotations

import asyncio
from pathlib import Path

from matrix_core.store import coap_psk, mqtt
from matrix_core.store.database import Database, open_sync
from matrix_core.store.migrations import COMPONENTS, migrate


def test_front_end_schemas_are_registered_under_their_old_names_and_versions(tmp_path: Path) -> None:
    assert COMPONENTS["mqtt"] is mqtt.MIGRATIONS and COMPONENTS["coap"] is coap_psk.MIGRATIONS
    conn = open_sync(tmp_path / "db.sqlite")
    versions = dict(conn.execute("SELECT component, version FROM schema_versions"))
    # what databases made before the move hold (mqtt 3: the household's step, issue 16)
    assert versions["mqtt"] == 3 and versions["coap"] == 1
    assert migrate(conn)["mqtt"] == 3  # nothing left to apply
    conn.close()


def test_sessions_rules_and_default_rooms_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = open_sync(path)
    key = mqtt.session_key("@alice:hub", "sensor 1")
    row = mqtt.SessionRow(key, "@alice:hub", 5, 3600, 42, 1234,
                          [mqtt.SubscriptionRow("garden/#", 1, True, False, 2, 7), mqtt.SubscriptionRow("a/b", 0)],
                          {3, 9})
    conn.execute("BEGIN")
    mqtt.save_session(conn, row)
    mqtt.add_incoming_qos2(conn, key, 11)
    mqtt.remove_incoming_qos2(conn, key, 3)
    mqtt.save_cursor(conn, key, 50)
    mqtt.claim_default_room(conn, "#mqtt/garden:hub", "@alice:hub")
    conn.execute("COMMIT")
    mqtt.set_rule(conn, "attic/#", "!attic:hub")  # the CLI's: a transaction of its own
    mqtt.set_rule(conn, "attic/+", "!other:hub")
    assert mqtt.delete_rule(conn, "attic/+") is True and mqtt.delete_rule(conn, "attic/+") is False
    assert mqtt.list_rules(conn) == [("attic/#", "!attic:hub")]
    conn.close()

    async def read() -> None:
        db = Database(path)
        await db.open()
        try:
            [loaded] = await mqtt.load_sessions(db)
            assert (loaded.key, loaded.client_id, loaded.user_id, loaded.protocol_level, loaded.expiry_interval,
                    loaded.cursor, loaded.disconnected_ts) == (key, "sensor 1", "@alice:hub", 5, 3600, 50, 1234)
            assert sorted(loaded.subscriptions, key=lambda s: s.topic_filter) == [
                mqtt.SubscriptionRow("a/b", 0), mqtt.SubscriptionRow("garden/#", 1, True, False, 2, 7)]
            assert loaded.incoming_qos2 == {9, 11}
            assert await mqtt.load_rules(db) == [("attic/#", "!attic:hub")]
            assert await mqtt.load_default_rooms(db) == {"#mqtt/garden:hub": ("@alice:hub", None)}
            await db.write(lambda c: mqtt.delete_session(c, key))
            assert await mqtt.load_sessions(db) == []
        finally:
            await db.close()

    asyncio.run(read())
