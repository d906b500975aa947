"""Progress of the long passes over every site: counts, rate and time left, as periodic log lines.

On RxRx1 each pass over 125k sites takes from minutes to hours; log lines (not a terminal bar) survive
in the logs of a detached or Beam build.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from absl import logging

Item = TypeVar("Item")
LOG_INTERVAL_S = 30.0


def logged(
    items: Iterable[Item], total: int, what: str, interval_s: float = LOG_INTERVAL_S
) -> Iterator[Item]:
    """Yields items, logging "what: done/total (percent), rate/s, ~time left" every interval_s."""
    start = last = time.monotonic()
    done = 0
    logging.info("rxrx1 %s: 0/%d", what, total)
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval_s or done == total:
            last = now
            rate = done / max(now - start, 1e-9)
            left_s = (total - done) / rate if rate else float("inf")
            logging.info(
                "rxrx1 %s: %d/%d (%.0f%%), %.1f/s, ~%.0f min left",
                what, done, total, 100.0 * done / max(total, 1), rate, left_s / 60,
            )  # fmt: skip
