#!/usr/bin/env bash
# Publish one message to a topic on the hub's MQTT broker (QoS 1: returns after the hub stored it).
#
#   MQTT_USER=alice TOKEN=XXXXXXXXXXXXXXXX ./mqtt_send.sh home/lamp toggle
#
# User name = the account's localpart; password = the account password or a device access token.
set -euo pipefail
: "${MQTT_USER:?set MQTT_USER to the account localpart}" "${TOKEN:?set TOKEN to a device access token}"
exec mosquitto_pub -h "${HUB_HOST:-127.0.0.1}" -p "${MQTT_PORT:-1883}" -u "$MQTT_USER" -P "$TOKEN" -q 1 \
  -t "${1:?usage: mqtt_send.sh TOPIC MESSAGE}" -m "${2:?usage: mqtt_send.sh TOPIC MESSAGE}"
