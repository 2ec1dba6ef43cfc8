"""Per-device settings: edit before copying to the board."""
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"
HUB_HOST = "192.168.1.10"
HUB_MQTT_PORT = 1883
USER = "alice"                  # MQTT user name = the account's localpart
TOKEN = "XXXXXXXXXXXXXXXX"      # password = a device access token: matrix-gateway device add alice lamp
CLIENT_ID = "lamp-1"
TOPIC = "home/lamp"             # the room's topic (room bound to home/lamp/#)
STATE_TOPIC = "home/lamp/state" # where the new state is published (same room), or None
PIN = "LED"                     # Pico W's LED; on an ESP32 a GPIO number, e.g. 2
