"""Protocol front ends (CoAP, MQTT): thin adapters onto matrix_core's service layer.

`PURE_MODULES`: their protocol logic with no I/O (codecs, state machines, topic and payload
mapping, fan-out), tested without sockets; tests/test_pure_modules.py keeps them so."""

PURE_MODULES = (
    "payload_mapping",
    "coap.short_paths", "coap.translate", "coap.wire", "coap.codes", "coap.content",
    "mqtt.codec", "mqtt.connection", "mqtt.packets", "mqtt.constants", "mqtt.fanout", "mqtt.routing",
    "mqtt.topics", "mqtt.subscriptions", "mqtt.deny", "mqtt.session", "mqtt.messages",
    "mqtt.bridge",
)
