"""The follower: a thread that applies what any process writes to a store, as it is written.

It waits for the store to signal a change (PostgreSQL's NOTIFY) or for the interval to pass
(SQLite, and PostgreSQL as a fallback), then calls ``sync``. While the store cannot be reached it
records why (``error``, shown in ``/readyz``) and tries again every interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from index.store import Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

__all__ = ["Follower"]


class Follower:
    def __init__(self, name: str, store: Store, sync: Callable[[], object], interval: float) -> None:
        self.name, self.store, self.sync, self.interval = name, store, sync, interval
        self.error: str | None = None  # why the store cannot be followed, while it cannot
        self.unreachable: str | None = None  # the same, while the reason is that the store cannot be reached
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="index-follow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.store.wait_for_change(self.interval)
                if self._stopping:
                    return
                self.sync()
                if self.error is not None:
                    log.info("index %s: following the store again", self.name)
                self.error = self.unreachable = None
            except StoreError as e:
                if self.error != str(e):
                    log.warning("index %s: cannot follow the store: %s", self.name, e)
                self.error = str(e)
                self.unreachable = self.error if isinstance(e, StoreUnavailable) else None
                time.sleep(self.interval)
            except Exception as e:  # logged with its traceback once, not at every try
                error = f"applying the store's changes failed: {type(e).__name__}: {e}"
                if self.error != error:
                    log.exception("index %s: %s", self.name, error)
                self.error, self.unreachable = error, None
                time.sleep(self.interval)

    def stop(self) -> None:
        self._stopping = True
        self.store.wake()
        self._thread.join(10)
