"""Device entry point (ESP32 / Pico W): Wi-Fi up, then mqtt_actuator.run driving a pin.

Copy mqtt_actuator.py, config.py and this file to the board. Not imported by the tests (it is all
hardware); the logic lives in mqtt_actuator.py, which the tests run under CPython against a live hub.
"""
import socket
import time

import machine
import network

import config
import mqtt_actuator

relay = machine.Pin(config.PIN, machine.Pin.OUT, value=0)


def act(command: str) -> str:
    """Drive the relay/LED pin; returns the new state, which is published to STATE_TOPIC."""
    if command == "toggle":
        relay.value(not relay.value())
    else:
        relay.value(command == "on")
    return "on" if relay.value() else "off"


def tcp(host: str, port: int):
    """A connected TCP socket, as umqtt.simple opens it."""
    sock = socket.socket()
    sock.connect(socket.getaddrinfo(host, port)[0][-1])
    return sock


wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
while not wlan.isconnected():
    time.sleep_ms(200)

mqtt_actuator.run(tcp, time, act, config.HUB_HOST, config.HUB_MQTT_PORT, config.USER, config.TOKEN,
                  config.TOPIC, config.CLIENT_ID, state_topic=config.STATE_TOPIC)
