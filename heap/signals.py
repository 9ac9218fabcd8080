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

``deferred_alloc()`` is the same for one allocation, which changes nothing
outside the process: a signal left at its default action (SIGTERM, usually)
ends the process at once, half-made object and all, so only the handlers
Python code runs are held -- one handler swap in and out (SIGINT's) instead
of two. A collection the allocation starts inside it holds the rest itself.

The third signal of one kind during the same collection is delivered at
once (a way out of a collection that does not end), except inside a
``critical()`` section: from the flip to the end of the install (or to the
start of a concurrent cycle's threads), and ``close()``, where an unwind
would leave the objects in the from-space with nobody to install them. An
escape that comes due there goes through when the section ends. Collections in other threads need nothing:
handlers run only in the main thread, which a signal cannot make unwind
through another thread's collection.

The handlers are swapped, not installed once for good: outside the heap's
calls ``signal.getsignal`` returns what the program installed (asyncio.run,
for one, looks for ``default_int_handler`` there).
"""

from __future__ import annotations

import signal
import threading
from _thread import get_ident

try:  # the C functions signal.py wraps: the same calls without its enum conversion, ~10x cheaper
    import _signal as _raw
except ImportError:  # another Python implementation
    _raw = signal

DEFERRED = (signal.SIGINT, signal.SIGTERM)
ESCAPE_AFTER = 3  # signals of one kind within one collection before they go through at once
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)

_enabled = True
_depth = 0  # deferrals open in the main thread (the only thread whose handlers run)
_critical = 0  # critical sections open in the main thread: no escape until they end
# signum -> (the handler it had, the deferral that swapped it): the signals held right now
_held: dict[int, tuple[object, object]] = {}
_pending: list[int] = []  # held signals received, in arrival order
_main_thread = threading.main_thread


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


def _hold(signum, frame):
    """The handler of a held signal: record it (and let an escape through)."""
    if signum not in _held:  # given back meanwhile: whoever has it now
        handler = _raw.getsignal(signum)
        if handler is not _hold:
            _deliver(signum, handler)
        return
    _pending.append(signum)
    if not _critical:
        _escape(signum)


def _escape(signum: int) -> None:
    entry = _held.get(signum)
    if entry is not None and _pending.count(signum) >= ESCAPE_AFTER:
        _raw.signal(signum, entry[0])  # given back before it leaves _held: _hold never sees it unheld and swapped
        del _held[signum]
        _pending[:] = [s for s in _pending if s != signum]
        _deliver(signum, entry[0])


class deferred:
    """``with deferred():`` holds SIGINT/SIGTERM for the duration (main thread only; nests).

    A class, not a generator context manager: a single ``alloc()`` runs
    inside one (``deferred_alloc``). Each signal is swapped by the outermost
    deferral that holds it, and given back (its received signals delivered,
    once per kind, in arrival order) when that one ends."""

    __slots__ = ("_mine",)
    holds_default_action = True  # also a signal left at SIG_DFL

    def __enter__(self) -> "deferred":
        global _depth
        self._mine = None
        if not _enabled or get_ident() != _main_thread().ident:
            return self
        _depth += 1
        self._mine = mine = []
        try:
            for signum in DEFERRED:
                if signum in _held:
                    continue
                handler = _raw.getsignal(signum)
                if handler is None or handler == _SIG_IGN or (handler == _SIG_DFL and not self.holds_default_action):
                    continue  # not installed from Python, ignored, or (an allocation) ends the process at once
                _held[signum] = (handler, self)  # before the swap: a signal right after it finds its handler
                mine.append(signum)
                _raw.signal(signum, _hold)
        except BaseException:  # a signal that arrived just before, delivered by signal.signal itself
            if mine and _raw.getsignal(mine[-1]) is not _hold:
                _held.pop(mine.pop(), None)  # its swap did not happen
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        global _depth
        mine = self._mine
        if mine is None:
            return
        self._mine = None
        _depth -= 1
        back = {}
        for signum in mine:
            entry = _held.get(signum)
            if entry is None or entry[1] is not self:
                continue  # escaped meanwhile: already given back
            _raw.signal(signum, entry[0])
            del _held[signum]
            back[signum] = entry[0]
        if not _pending:  # the common case: nothing arrived
            return
        if not _depth:
            due = list(dict.fromkeys(_pending))
            _pending.clear()
        elif back and _pending:
            due = [s for s in dict.fromkeys(_pending) if s in back]
            _pending[:] = [s for s in _pending if s not in back]
        else:
            return
        for signum in due:  # once per kind, in arrival order
            if signum in back:
                _deliver(signum, back[signum])


class deferred_alloc(deferred):
    """``deferred()`` for one allocation: holds only the signals whose handler
    is Python code (module docstring: a default action ends the process, and
    nothing half made outlives it)."""

    __slots__ = ()
    holds_default_action = False


class critical:
    """``with critical():`` inside a deferral (main thread only; nests): not
    even the escape goes through until the section ends; then an escape that
    came due meanwhile does."""

    __slots__ = ("_counted",)

    def __enter__(self) -> "critical":
        global _critical
        self._counted = _enabled and get_ident() == _main_thread().ident
        if self._counted:
            _critical += 1
        return self

    def __exit__(self, *exc) -> None:
        global _critical
        if not self._counted:
            return
        self._counted = False
        _critical -= 1
        if not _critical and _depth:
            for signum in list(dict.fromkeys(_pending)):
                _escape(signum)
