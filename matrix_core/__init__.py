"""The embedded Matrix homeserver: pure protocol logic, storage, service layer and client API.

`PURE_MODULES` are the modules of pure protocol logic (ARCHITECTURE.md rule 4): data in, data
out, no socket, database, event loop or thread (a clock only as a parameter's default). They are
tested without sockets; tests/test_pure_modules.py keeps them free of I/O imports."""

PURE_MODULES = (
    "canonical_json", "signing", "event_hashing", "events", "room_versions", "auth_rules", "state_res",
    "history_visibility", "room_presets", "params", "identifiers", "client_format", "log_limit", "ratelimit",
    "errors", "clock", "sync_token",
    # issue 13, the client API real clients call
    "ephemeral",
    "account_data_rules", "presence_state",
    "uia",
    "push_rules",
    "push_gateway",
    "relations",
    # issue 14, end-to-end encryption
    "e2e_rules", "cross_signing_rules", "key_backup_rules", "e2e_federation_rules",
    # issue 15, the content repository
    "media_rules", "device_media",
    # issue 17, application services
    "appservice_rules",
    # issue 18, the hub's web pages
    "series", "setup_rules",
    "admin_rules", "device_setup",
    # issue 19, Simplified Sliding Sync
    "sliding_sync_rules",
)
