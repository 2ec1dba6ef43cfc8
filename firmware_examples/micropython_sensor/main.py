"""Device entry point (ESP32 / Pico W): Wi-Fi up, then coap_sensor.run with real hardware.

Copy coap_sensor.py, config.py and this file to the board (mpremote cp ... :). Not imported by the
tests: everything here is hardware (network, machine, the sensor driver); the logic lives in
coap_sensor.py, which the tests run under CPython against a live hub.
"""
import socket
import time

import machine
import network

import config
import coap_sensor


def wifi_up() -> None:
    """Join the Wi-Fi network; CoAP needs nothing else (no TLS, no DNS if HUB_HOST is an IP)."""
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
        while not wlan.isconnected():
            time.sleep_ms(200)
    print("wifi", wlan.ifconfig())


def read_sensor() -> dict:
    """The on-chip temperature sensor of the RP2040 (ADC 4); swap in your DHT22/BME280 driver here."""
    raw = machine.ADC(4).read_u16() * 3.3 / 65535
    return {"t": 27 - (raw - 0.706) / 0.001721, "uptime_s": time.ticks_ms() // 1000}


def udp_socket():
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


wifi_up()
server = socket.getaddrinfo(config.HUB_HOST, config.HUB_COAP_PORT)[0][-1]
coap_sensor.run(udp_socket, time, read_sensor, server, config.ROOM, config.TOKEN,
                event_type=config.EVENT_TYPE, period_ms=config.PERIOD_MS, msc3079=config.MSC3079)
