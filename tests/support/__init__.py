"""Shared helpers for tests and benchmarks (peer launchers)."""
