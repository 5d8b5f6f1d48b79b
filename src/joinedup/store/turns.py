"""Write turns: the writers of one SQLite file take turns at its write lock, waking as soon as it is free.

SQLite lets one writer at a time hold a database's write lock. A writer that finds it taken is left to SQLite's
busy handler, which sleeps and tries again: 1, 2, 5, 10, 15, 20, 25 ms and on up to 100 ms between tries (the
`sqliteDefaultBusyCallback` delays). So a writer that arrives 0.1 ms after another has started a 5 ms transaction
typically sleeps 18 ms, and the lock stands idle for most of that. With several HL7 listener processes (`hl7
listen --processes N`) taking turns in quick succession, most of the time went in those sleeps.

`write_turn(path)` is held around each write transaction (`Store.writing`): in a process, a lock per database file
that a waiting thread blocks on; between processes, an advisory `flock` on a file beside the database
(`<database>-write.lock`), which a waiting process waits for in the kernel (a helper thread blocks in `flock`, so
the writer wakes the moment the file is unlocked and can still give up at its deadline). The turn changes nothing about
what SQLite guarantees: the transaction still takes SQLite's own lock (BEGIN IMMEDIATE), and a writer that does not
take turns (another program) is still kept out by it. A turn not had within `TURN_WAIT` seconds (a process stopped
while holding it, say) is not waited for any longer: the writer goes on to SQLite's own lock and busy timeout, as
without turns. A file that cannot be created beside the database (a read-only directory) means no turns between
processes, only within this one.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

TURN_WAIT = 30.0  # seconds a writer waits for its turn before leaving it to SQLite's busy timeout


class _Turns:
    """The turns at one database file, in this process."""

    def __init__(self, path: str) -> None:
        self.path = path + "-write.lock"
        self.lock = threading.RLock()  # a thread already in its turn (a nested write) is not stopped by itself
        self.depth = 0
        self.pid = 0  # the process that opened fd (a forked child opens its own: flock is per open file)
        self.fd: int | None = None

    def _file(self) -> int | None:
        if self.fd is None or self.pid != os.getpid():
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self.fd = None
            self.pid = os.getpid()
            # another process has the turn: a helper thread waits for it in the kernel (flock blocks without
            # using the processor and returns the moment the file is unlocked), the writer waits for the helper
            # no longer than its deadline
            self.cv = threading.Condition()
            self.asked = self.granted = self.served = self.given_up = 0  # request numbers
            self.helper: threading.Thread | None = None
        return self.fd

    def _take_file(self, deadline: float) -> bool:
        """This process's turn at the file, or False when it cannot be had (no file, or not before `deadline`).
        Called by one thread at a time (the one holding self.lock)."""
        fd = self._file()
        if fd is None:
            return False
        with self.cv:
            if self.served == self.asked:  # the helper is not waiting for the file for a writer that gave up
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                except OSError:
                    return False
            self.asked += 1
            mine = self.asked
            if self.helper is None:
                self.helper = threading.Thread(target=self._wait_for_file, args=(fd,), daemon=True,
                                               name="joinedup-write-turn")
                self.helper.start()
            self.cv.notify_all()
            while self.granted < mine:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.given_up = mine
                    return False
                self.cv.wait(left)
            return True

    def _wait_for_file(self, fd: int) -> None:
        """The helper: for each request, wait in the kernel for the file and hand it to the newest request (or give
        it back when the writer that asked has given up and nobody has asked since)."""
        while True:
            with self.cv:
                while self.served >= self.asked:
                    self.cv.wait()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                return  # the file is gone (closed): writers go on without turns between processes, at their deadline
            with self.cv:
                if self.given_up >= self.asked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                else:
                    self.granted = self.asked
                self.served = self.asked
                self.cv.notify_all()

    @contextmanager
    def turn(self) -> Iterator[None]:
        deadline = time.monotonic() + TURN_WAIT
        held = self.lock.acquire(timeout=TURN_WAIT)
        filed = False
        try:
            if held:
                self.depth += 1
                if self.depth == 1:
                    filed = self._take_file(deadline)
            yield
        finally:
            if held:
                self.depth -= 1
                if filed:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                self.lock.release()


_by_path: dict[str, _Turns] = {}
_guard = threading.Lock()


def turns_for(path: str) -> _Turns:
    """The turns at the database file `path` in this process (one per file, however it is named): its `turn()` is
    held around one write transaction. Looked up once per store, not per write (the path is resolved on disk)."""
    key = os.path.realpath(path)
    turns = _by_path.get(key)
    if turns is None:
        with _guard:
            turns = _by_path.setdefault(key, _Turns(key))
    return turns


def write_turn(path: str) -> AbstractContextManager[None]:
    """The turn at the database file `path` (a context manager held around one write transaction)."""
    return turns_for(path).turn()
