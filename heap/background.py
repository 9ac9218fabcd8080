"""Background concurrent collection: the caller gets its thread back after the pause.

``Heap.collect(concurrent=True, wait=False)`` (``heap.concurrent.collect_concurrent``
with ``wait=False``) runs the pause, starts the cycle's install and returns a
``BackgroundCollection`` at once. When the cycle's compactor thread is done
(``ConcurrentCycle.then``) a short-lived thread ends the collection: it
raises nothing there; an error is kept for ``wait``/``result``. Whatever
comes first settles a running cycle: the compactor thread, a later
``collect``, ``close``, ``os.fork`` (heap.forksafety quiesces the heap), or
any heap operation after the compactor stopped on an error.

The handle:

* ``done()``: whether the collection is over (its stats are final);
* ``wait(timeout=None) -> ConcurrentGCStats``: blocks until then (``TimeoutError``
  after ``timeout`` s), raising the cycle's error (``CompactionAborted``,
  ``HeapCorrupted``) if it failed;
* ``stats``: the collection's ``ConcurrentGCStats`` (filled in as it goes).

With the copying compactor the collection is stop-the-world: it is over
when the handle is returned.
"""

from __future__ import annotations

import threading


class BackgroundCollection:
    """A concurrent collection that runs on after ``collect`` returned (see the module doc)."""

    def __init__(self, heap, cycle, stats):
        self._heap = heap
        self._cycle = cycle
        self.stats = stats
        self.error: BaseException | None = None
        self._ended = threading.Event()  # the compactor thread's end of the cycle has run
        self._ending = threading.Lock()  # held by the one thread that runs it
        self._finisher: threading.Thread | None = None
        if cycle is None:
            self._ended.set()

    def _end_from_compactor(self) -> None:
        """Once the compactor is done (called in its thread): end the cycle in a
        thread of its own. Not in the compactor's: ending takes the heap lock,
        and whoever settles the cycle meanwhile (collect, close, a fork's
        quiesce) holds it while it joins the compactor."""
        if not self._ending.acquire(blocking=False):
            return  # the other one of (the compactor thread, start_background) runs it
        self._finisher = threading.Thread(target=self._end, name="remapgc-finisher", daemon=True)
        self._finisher.start()

    def _end(self) -> None:
        try:
            self._heap.end_concurrent(self._cycle)
        except BaseException as exc:  # kept for wait(); the next heap operation completes the install
            self.error = exc
        finally:
            self._ended.set()

    def done(self) -> bool:
        """The collection is over: wait() returns at once."""
        if self._cycle is None:
            return True
        # ended here or by whoever settled it (a collect, close, fork), or failed here
        return self._cycle.ended.is_set() or (self._ended.is_set() and self.error is not None)

    def wait(self, timeout: float | None = None):
        """The collection's ConcurrentGCStats once it is over; its error if it failed."""
        if self._cycle is not None:
            if not self._ended.wait(timeout):
                raise TimeoutError(f"the background collection is still installing after {timeout} s")
            if self._finisher is not None:
                self._finisher.join(timeout)  # it has just set _ended: returning
            if self.error is not None:
                raise self.error
            # another thread (a collect, close, fork) may have ended it: its counting is the last step
            if not self._cycle.ended.wait(timeout):
                raise TimeoutError(f"the background collection is still ending after {timeout} s")
        return self.stats

    result = wait

    def __repr__(self) -> str:
        return f"BackgroundCollection({'done' if self.done() else 'running'})"


def start_background(heap, *, chunk_pages: int):
    """The pause, then the cycle runs on; returns its ``BackgroundCollection``."""
    cycle, stats, finish = heap.begin_concurrent(chunk_pages=chunk_pages, run_compactor=True)
    if cycle is None:  # the copying compactor: stop-the-world, over now
        finish()
        return BackgroundCollection(heap, None, stats)
    handle = BackgroundCollection(heap, cycle, stats)
    cycle.then = handle._end_from_compactor
    if cycle.compactor_done.is_set():  # the compactor may have finished before it could see ``then``
        handle._end_from_compactor()
    return handle
