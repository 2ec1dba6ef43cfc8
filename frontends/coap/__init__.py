"""CoAP bridge: Matrix over CoAP (+CBOR) for constrained devices."""
