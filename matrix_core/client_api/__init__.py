"""The client-server API as a transport-neutral route table; HTTP and CoAP both dispatch into it."""
