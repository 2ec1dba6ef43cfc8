"""Operating the appliance: systemd notification, backup and restore, status, retention, discovery.

One job per module; each is imported only by the command or start-up step that needs it.
"""
