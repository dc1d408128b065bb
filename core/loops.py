"""The one background loop: a daemon thread that runs a task every `interval_s` (start to start)
until stopped, and never dies of the task's exceptions (they are logged, and the next round runs).
The model reloader, the item-feature cache refresh and the Redis health check use it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class PeriodicTask:
    def __init__(self, name: str, interval_s: float, task: Callable[[], object], log: logging.Logger,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.name = name
        self.interval_s = interval_s
        self.task = task
        self.log = log
        self.on_error = on_error  # e.g. record the error; the default logs it with its traceback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeriodicTask:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            started = time.perf_counter()
            try:
                self.task()
            except Exception as error:  # noqa: BLE001 - the loop must never die
                if self.on_error is not None:
                    self.on_error(error)
                else:
                    self.log.exception("%s failed", self.name)
            wait = max(0.0, self.interval_s - (time.perf_counter() - started))
