"""Storage: one SQLite database in WAL mode, one writer thread with group commit, async readers."""
from .database import Database

__all__ = ["Database"]
