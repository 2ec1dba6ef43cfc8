"""The homeserver's service layer: the one API that HTTP, CoAP, MQTT and federation all call."""
