"""The appliance: configuration, the `matrix-gateway` CLI, start-up of every listener in one loop."""
