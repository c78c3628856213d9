"""Login throttling: failed logins slow down the name and the address they came from, with growing locks, so
guessing a password takes days instead of seconds while a person who mistypes waits a few seconds at most.
Kept in memory by the app process (app.web_guard asks it on every login)."""
from __future__ import annotations

import threading
import time


class LoginThrottle:
    """Failed logins per key ('name:alice', 'addr:10.0.0.7'): the first FREE failures of a name (FREE_PER_ADDRESS
    of an address, which people behind one proxy share) cost nothing, then each one locks the key for twice as
    long as the one before (2 s, 4 s, ... up to MAX_LOCK_S). A success clears the name and the address."""
    FREE = 5
    FREE_PER_ADDRESS = 20
    MAX_LOCK_S = 900

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.failures: dict[str, int] = {}
        self.locked_until: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait_s(self, keys: list[str]) -> float:
        """Seconds until a login for these keys is considered again (0: now)."""
        now = self.clock()
        with self.lock:
            return max([self.locked_until.get(k, 0) - now for k in keys] + [0])

    def failed(self, keys: list[str]) -> None:
        with self.lock:
            for k in keys:
                n = self.failures[k] = self.failures.get(k, 0) + 1
                free = self.FREE if k.startswith("name:") else self.FREE_PER_ADDRESS
                if n >= free:
                    self.locked_until[k] = self.clock() + min(2 ** (n - free + 1), self.MAX_LOCK_S)
            if len(self.failures) > 100_000:          # a flood of invented names cannot grow memory forever
                self.failures.clear()
                self.locked_until = {k: t for k, t in self.locked_until.items() if t > self.clock()}

    def succeeded(self, keys: list[str]) -> None:
        with self.lock:
            for k in keys:
                self.failures.pop(k, None)
                self.locked_until.pop(k, None)
