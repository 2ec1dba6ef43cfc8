"""Per-device settings: edit before copying to the board."""
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"
HUB_HOST = "192.168.1.10"      # the hub's address (or its mDNS name if your port resolves .local)
HUB_COAP_PORT = 5683
ROOM = "#kitchen:hub.local"     # an alias of the room (its server name after the colon)
TOKEN = "XXXXXXXXXXXXXXXX"      # matrix-gateway device add alice kitchen-sensor
EVENT_TYPE = "org.example.reading"
PERIOD_MS = 60000
MSC3079 = False                 # True: PUT /9/ROOM/TYPE/TXN with the token in option 256
