"""What every benchmark phase shares: the dataset's fixed parameters and the clock."""

from __future__ import annotations

import os
import time

STREAM = "transactions"
SEED = 20260101
POISON_RATE = 0.01
DUPLICATE_RATE = 0.01
LIVE_LOAD = 0.6  # live producer rate as a fraction of the measured replay rate


def now() -> float:
    return time.monotonic()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
