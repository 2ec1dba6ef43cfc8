"""`matrix-gateway mqtt map|unmap|maps`: the hub admin's topic rules.

They write the `mqtt_rules` table straight into the SQLite store (WAL), like the account
commands, so they work while the hub runs; the broker picks changes up within a second. The
gateway's CLI hands in what these commands need of it (its options, its config loader, its
way of opening the database): nothing here imports the gateway.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import click

from matrix_core.store import mqtt as mqtt_store
from matrix_core.store.room_lookup import resolve_room

from .topics import is_valid_rule_filter


def add_mqtt_commands(main: click.Group, data_dir_option: Any, config_option: Any,
                      existing_config: Callable[[Path, Path | None], Any], fail: Callable[[str], None],
                      open_db: Callable[[Path], sqlite3.Connection]) -> None:
    """`existing_config(data_dir, config_file)`: the hub's config (fails if there is no hub);
    `open_db(data_dir)`: a migrated connection to its database; `fail(message)` exits."""
    @main.group()
    def mqtt() -> None:
        """Topic <-> room rules of the MQTT broker (applied to a running hub within a second)."""

    def open_hub(data_dir: Path, config_file: Path | None) -> tuple[Any, sqlite3.Connection]:
        config = existing_config(data_dir, config_file)
        return config, open_db(data_dir)

    @mqtt.command("map")
    @click.argument("topic_filter")
    @click.argument("room")
    @data_dir_option
    @config_option
    def mqtt_map(topic_filter: str, room: str, data_dir: Path, config_file: Path | None) -> None:
        """Publishes to topics matching TOPIC_FILTER go to ROOM (a room id or #alias)."""
        if not is_valid_rule_filter(topic_filter):
            fail(f"{topic_filter!r} is not a topic filter a rule can use (no $share/, no leading $)")
        config, conn = open_hub(data_dir, config_file)
        try:
            room_id = resolve_room(conn, room, config.server_name)
            if room_id is None:
                fail(f"no such room on this hub: {room}")
                return  # (fail exits)
            mqtt_store.set_rule(conn, topic_filter, room_id)
        finally:
            conn.close()
        click.echo(f"{topic_filter} -> {room_id}")

    @mqtt.command("unmap")
    @click.argument("topic_filter")
    @data_dir_option
    @config_option
    def mqtt_unmap(topic_filter: str, data_dir: Path, config_file: Path | None) -> None:
        """Remove the rule for TOPIC_FILTER."""
        _, conn = open_hub(data_dir, config_file)
        try:
            removed = mqtt_store.delete_rule(conn, topic_filter)
        finally:
            conn.close()
        if not removed:
            fail(f"no rule for {topic_filter!r}")
        click.echo(f"removed {topic_filter}")

    @mqtt.command("maps")
    @data_dir_option
    @config_option
    def mqtt_maps(data_dir: Path, config_file: Path | None) -> None:
        """List the rules (topic filter, room id), one per line."""
        _, conn = open_hub(data_dir, config_file)
        try:
            for topic_filter, room_id in mqtt_store.list_rules(conn):
                click.echo(f"{topic_filter}\t{room_id}")
        finally:
            conn.close()
