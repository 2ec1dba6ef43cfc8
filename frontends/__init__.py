"""Protocol front ends (CoAP, MQTT): thin adapters onto matrix_core's service layer."""
