"""The embedded Matrix homeserver: pure protocol logic, storage, service layer and client API."""
