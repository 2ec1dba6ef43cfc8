"""An automation as an application service (mautrix-python): "kitchen above 25 °C → fan ON".

The kitchen sensor publishes `home/kitchen/temp` over MQTT (`{"t": 26.5}` or a bare number); the
hub makes that a room event. The bot, invited into the sensor's room and the fan's, gets every
reading pushed in a transaction (no /sync loop), and when the temperature crosses the threshold it
sends an MQTT-shaped event into the fan's room: the hub's broker publishes it on `home/fan/set`
(`ON`, or `OFF` once it is back below threshold − hysteresis), where the fan (any MQTT client:
Tasmota, ESPHome, mosquitto_sub) listens.

    matrix-gateway appservice add registration.yaml      # once, tokens changed
    python fan_bot.py --hub http://127.0.0.1:8008 --server-name YOUR_SERVER --registration registration.yaml

Then invite @automation:YOUR_SERVER to the kitchen's room (#mqtt/home/kitchen) and the fan's
(#mqtt/home/fan). The decision is `decide()`, pure, so the rule is easy to change and test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import Any
from urllib.parse import urlsplit

import yaml
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import Event, EventType, Membership, RoomAlias, RoomID

SENSOR_TOPIC = "home/kitchen/temp"
FAN_TOPIC = "home/fan/set"
FAN_ROOM_ALIAS = "#mqtt/home/fan"
THRESHOLD_C = 25.0
HYSTERESIS_C = 1.0


def reading(content: dict[str, Any], topic: str = SENSOR_TOPIC) -> float | None:
    """The temperature in an MQTT message event of `topic` (payload `{"t": 26.5}` or `26.5`)."""
    mqtt = content.get("mqtt")
    if not isinstance(mqtt, dict) or mqtt.get("topic") != topic:
        return None
    payload = mqtt.get("payload", {})
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("text"), str):  # the bytes as sent, when they are text
        try:
            value: Any = json.loads(payload["text"])
        except ValueError:
            return None
    else:  # JSON kept as a value: a fraction is {"$f": "26.5"} (docs/payload-mapping.md)
        value = payload.get("value")
    if isinstance(value, dict):
        value = value.get("t")
    if isinstance(value, dict) and isinstance(value.get("$f"), str):
        value = float(value["$f"])
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def decide(temperature: float, fan_on: bool | None) -> str | None:
    """The command to publish, if any: ON above the threshold, OFF below it minus the hysteresis
    (so a reading hovering around 25 °C does not toggle the fan at every sample)."""
    if temperature > THRESHOLD_C and fan_on is not True:
        return "ON"
    if temperature < THRESHOLD_C - HYSTERESIS_C and fan_on is not False:
        return "OFF"
    return None


def command_content(topic: str, command: str) -> dict[str, Any]:
    """An event the hub's broker publishes on `topic` with the exact payload (docs/mqtt.md)."""
    return {"msgtype": "org.matrix_gateway.mqtt", "body": f"{topic}: {command}",
            "mqtt": {"topic": topic, "qos": 1, "payload": {"kind": "text", "text": command}}}


class FanAutomation:
    def __init__(self, hub: str, server_name: str, registration: dict[str, Any], state_file: str) -> None:
        url = urlsplit(registration["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.server_name = server_name
        self.appservice = AppService(
            server=hub, domain=server_name, as_token=registration["as_token"], hs_token=registration["hs_token"],
            bot_localpart=registration["sender_localpart"], id=registration["id"],
            state_store=FileASStateStore(state_file, binary=False))
        self.appservice.matrix_event_handler(self.on_event)
        self.fan_on: bool | None = None
        self.fan_room: RoomID | None = None

    async def start(self) -> None:
        await self.appservice.start(host=self.host, port=self.port)

    async def on_event(self, event: Event) -> None:
        intent = self.appservice.intent
        if event.type == EventType.ROOM_MEMBER and event.state_key == intent.mxid \
                and event.content.membership == Membership.INVITE:
            await intent.join_room(event.room_id)
            print(f"joined {event.room_id}", flush=True)
            return
        if event.type != EventType.ROOM_MESSAGE or event.sender == intent.mxid:
            return
        temperature = reading(event.content.serialize())
        if temperature is None:
            return
        command = decide(temperature, self.fan_on)
        if command is None:
            return
        if self.fan_room is None:
            self.fan_room = (await intent.resolve_room_alias(RoomAlias(f"{FAN_ROOM_ALIAS}:{self.server_name}"))).room_id
        content: Any = command_content(FAN_TOPIC, command)  # a plain dict: mautrix sends it as it is
        await intent.send_message_event(self.fan_room, EventType.ROOM_MESSAGE, content)
        self.fan_on = command == "ON"
        print(f"kitchen {temperature} °C -> {FAN_TOPIC} {command}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", required=True, help="the hub's client API, e.g. http://127.0.0.1:8008")
    parser.add_argument("--server-name", default="localhost", help="the hub's server_name")
    parser.add_argument("--registration", required=True, help="the registration file given to the hub")
    parser.add_argument("--state", default="fan-bot-state.json", help="mautrix's state file")
    args = parser.parse_args()
    with open(args.registration) as fh:
        registration = yaml.safe_load(fh)
    bot = FanAutomation(args.hub, args.server_name, registration, args.state)
    await bot.start()
    print("fan automation ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await bot.appservice.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
