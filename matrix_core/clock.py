"""The one wall clock of the hub, in Matrix's unit (milliseconds since the epoch).

Pure modules take time as an argument; services take a clock callable defaulting to this, so
tests can pass their own."""
from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
