#!/usr/bin/env bash
# Print every message on a topic filter as "TOPIC PAYLOAD", one per line. Messages typed into the
# room in Element arrive on the room's topic as JSON: {"content": {...}, "event_id": ..., ...}.
#
#   MQTT_USER=alice TOKEN=XXXXXXXXXXXXXXXX ./mqtt_listen.sh 'home/lamp/#' [more mosquitto_sub args, e.g. -C 1]
set -euo pipefail
: "${MQTT_USER:?set MQTT_USER to the account localpart}" "${TOKEN:?set TOKEN to a device access token}"
TOPIC=${1:?usage: mqtt_listen.sh TOPIC_FILTER [mosquitto_sub args]}
shift
exec mosquitto_sub -h "${HUB_HOST:-127.0.0.1}" -p "${MQTT_PORT:-1883}" -u "$MQTT_USER" -P "$TOKEN" -q 1 -v \
  -t "$TOPIC" "$@"
