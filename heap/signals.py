"""SIGINT / SIGTERM during a collection: delivered after the heap is consistent.

Python runs signal handlers in the main thread between bytecodes, so a
Ctrl-C in the middle of ``collect()`` would raise KeyboardInterrupt at any
point of it: between the flip and the install, with half the slots fixed up.
The heap would be left with its objects in the from-space. So while the main
thread collects, ``deferred()`` swaps the handlers of SIGINT and SIGTERM for
one that only records the signal; when the collection is over (completed, or
ended in its own clean error) the previous handlers come back and each
recorded signal is delivered to them: the default SIGINT handler raises
KeyboardInterrupt in the caller of ``collect()``, a SIGTERM handler the
program installed runs (and its exception reaches the caller), and a SIGTERM
left at its default action terminates the process then.

The third signal of one kind during the same collection is delivered at
once (a way out of a collection that does not end), except inside a
``critical()`` section: from the flip to the end of the install (or to the
start of a concurrent cycle's threads), and ``close()``, where an unwind
would leave the objects in the from-space with nobody to install them. An
escape that comes due there goes through when the section ends. Collections in other threads need nothing:
handlers run only in the main thread, which a signal cannot make unwind
through another thread's collection.
"""

from __future__ import annotations

import signal
import threading

try:  # the C functions signal.py wraps: the same calls without its enum conversion, ~10x cheaper
    import _signal as _raw
except ImportError:  # another Python implementation
    _raw = signal

DEFERRED = (signal.SIGINT, signal.SIGTERM)
ESCAPE_AFTER = 3  # signals of one kind within one collection before they go through at once

_enabled = True
_depth = 0  # deferrals open in the main thread (the only thread whose handlers run)
_critical = 0  # critical sections open in the main thread: no escape until they end
_escape_due = None  # the outermost deferral's check for an escape held by a critical section


def set_enabled(on: bool) -> bool:
    """Turn deferral off (tests that show what it prevents); returns the old setting."""
    global _enabled
    old, _enabled = _enabled, bool(on)
    return old


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)  # default_int_handler raises KeyboardInterrupt here
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action (SIGTERM: the process ends), now


class deferred:
    """``with deferred():`` holds SIGINT/SIGTERM for the duration (main thread only; nests).

    A class, not a generator context manager: a single ``alloc()`` runs
    inside one, so entering and leaving cost four ``signal.signal`` calls
    (through ``_signal``: ~1 us in all) and little else."""

    __slots__ = ("_counted", "_old", "_pending")

    def __enter__(self) -> "deferred":
        global _depth
        self._counted = self._old = None
        if not _enabled or threading.current_thread() is not threading.main_thread():
            return self
        self._counted = True
        _depth += 1
        if _depth > 1:
            return self
        pending: list[int] = []
        old: dict[int, object] = {}

        def hold(signum, frame):
            pending.append(signum)
            if not _critical:
                escape(signum)

        def escape(signum):
            if signum in old and pending.count(signum) >= ESCAPE_AFTER:
                _raw.signal(signum, old[signum])
                pending[:] = [s for s in pending if s != signum]
                _deliver(signum, old.pop(signum))

        def escape_due():
            for signum in list(dict.fromkeys(pending)):
                escape(signum)

        global _escape_due
        _escape_due = escape_due

        self._old, self._pending = old, pending
        try:
            for signum in DEFERRED:
                handler = _raw.getsignal(signum)
                if handler is None or handler == signal.SIG_IGN:
                    continue  # not installed from Python, or ignored: leave it alone
                old[signum] = handler
                _raw.signal(signum, hold)
        except BaseException:  # a signal that arrived just before, delivered by signal.signal itself
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        global _depth
        if not self._counted:
            return
        self._counted = None
        _depth -= 1
        if not _depth:
            global _escape_due
            _escape_due = None
        old = self._old
        if old is None:
            return
        self._old = None
        for signum, handler in old.items():
            _raw.signal(signum, handler)
        for signum in dict.fromkeys(self._pending):  # once per kind, in arrival order
            if signum in old:
                _deliver(signum, old[signum])


class critical:
    """``with critical():`` inside a deferral (main thread only; nests): not
    even the escape goes through until the section ends; then an escape that
    came due meanwhile does."""

    __slots__ = ("_counted",)

    def __enter__(self) -> "critical":
        global _critical
        self._counted = _enabled and threading.current_thread() is threading.main_thread()
        if self._counted:
            _critical += 1
        return self

    def __exit__(self, *exc) -> None:
        global _critical
        if not self._counted:
            return
        self._counted = False
        _critical -= 1
        if not _critical and _escape_due is not None:
            _escape_due()
