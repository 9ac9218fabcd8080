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
once (a way out of a collection that does not end; the heap may then be
mid-cycle: verify() says so). Collections in other threads need nothing:
handlers run only in the main thread, which a signal cannot make unwind
through another thread's collection.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

DEFERRED = (signal.SIGINT, signal.SIGTERM)
ESCAPE_AFTER = 3  # signals of one kind within one collection before they go through at once

_state = threading.local()
_enabled = True


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


@contextmanager
def deferred():
    """Hold SIGINT/SIGTERM for the duration (main thread only; nests)."""
    if (not _enabled or threading.current_thread() is not threading.main_thread()
            or getattr(_state, "depth", 0)):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    pending: list[int] = []
    old: dict[int, object] = {}

    def hold(signum, frame):
        pending.append(signum)
        if pending.count(signum) >= ESCAPE_AFTER:
            signal.signal(signum, old[signum])
            pending[:] = [s for s in pending if s != signum]
            _deliver(signum, old.pop(signum))

    for signum in DEFERRED:
        handler = signal.getsignal(signum)
        if handler is None or handler == signal.SIG_IGN:
            continue  # not installed from Python, or ignored: leave it alone
        old[signum] = handler
        signal.signal(signum, hold)
    _state.depth = 1
    try:
        yield
    finally:
        _state.depth = 0
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):  # once per kind, in arrival order
            if signum in old:
                _deliver(signum, old[signum])
