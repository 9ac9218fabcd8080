"""What the heap calls on the host around a collection: the mutator protocol
(stop and resume the runtime's own threads around every pause) and the
collection callbacks (before and after every collection, automatic ones
included). docs/embedding.md, "The mutator protocol" and "Callbacks", is
the contract; this module keeps it.

Order, for every collection (``collect()``, ``collect(concurrent=True)``, and
the ones ``alloc`` starts by itself):

1. ``callback("start", info)`` for every callback, in registration order;
2. ``stop_mutators(info)`` for every mutator hook, in registration order;
3. the pause (mark, plan, flip, forward; stop-the-world: the install too);
4. ``resume_mutators(info)`` for every mutator hook, in reverse order;
5. (concurrent: the install, while the runtime's threads run)
6. ``callback("stop", info)`` with ``info.stats`` set, in registration order.

Guarantees: every step runs on the thread that collects (the caller of
``collect`` or of the ``alloc`` that needed room); steps 1-4 run with the
heap lock held, and no ``Ref`` access is in flight from 2 to 4; a
``stop_mutators`` is always followed by its ``resume_mutators`` (also when
the collection fails); a ``"start"`` callback is always followed by its
``"stop"`` (``info.error`` set when the collection failed). While a hook or
callback runs, the heap refuses calls from that thread (``HookReentry``),
except ``Heap.finalized()`` and reading ``info``: a collection is half done
and the heap is not in a state to be used. If a ``stop_mutators`` raises,
the hooks already stopped are resumed, the collection does not run, and the
exception reaches the caller. A callback's exception is logged
(``callback_failed``, ERROR) and does not stop the collection (as CPython's
``gc.callbacks``); a ``resume_mutators``'s exception is raised to the caller
once every hook was resumed and the collection is complete.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from .errors import HeapError
from .events import get_logger

log = get_logger("remapgc.heap")


class HookReentry(HeapError, RuntimeError):
    """A heap call from inside a root scanner, a mutator hook or a collection callback."""


@dataclass
class CollectionInfo:
    """What the hooks and callbacks learn about one collection."""

    collection: int  # its number: heap.collections + 1 while it runs
    concurrent: bool  # pages installed while mutators run
    automatic: bool  # started by alloc (heap full, or collect_every), not by collect()
    compactor: str  # "remap", "copy" (or "concurrent")
    stats: object | None = None  # its GCStats / ConcurrentGCStats; set for the "stop" callbacks
    error: BaseException | None = None  # the collection failed with it ("stop" callbacks)

    def ended(self, stats) -> None:
        """The collection is over (heap.pause.Pause.end): the "stop" callbacks."""
        hooks = self.__dict__.pop("_hooks", None)
        if hooks is not None:
            self.stats = stats
            hooks.finish(self)


@runtime_checkable
class MutatorHooks(Protocol):
    """A runtime's own threads, stopped around every pause (MMTk's
    ``Collection::stop_all_mutators`` / ``resume_mutators``).

    A thread blocked inside a heap call (waiting for the heap lock) is at a
    safe point: ``stop_mutators`` must not wait for it (treat every heap call
    like a blocking native call)."""

    def stop_mutators(self, info: CollectionInfo) -> None: ...

    def resume_mutators(self, info: CollectionInfo) -> None: ...


Callback = Callable[[str, CollectionInfo], None]


class Hooks:
    """One heap's mutator hooks and callbacks, and the guard against reentry."""

    def __init__(self, gate=None) -> None:
        self.gate = gate  # heap.access.AccessGate: told when host code runs (compiled accesses then take the lock)
        self.mutators: list[MutatorHooks] = []
        self.callbacks: list[Callback] = []
        self.inside: set[int] = set()  # threads running a hook or callback now

    # -- registration (under the heap lock) --------------------------------------------------
    def add_mutators(self, hooks: MutatorHooks) -> None:
        if not (callable(getattr(hooks, "stop_mutators", None)) and callable(getattr(hooks, "resume_mutators", None))):
            raise TypeError("mutator hooks need stop_mutators(info) and resume_mutators(info)")
        self.mutators.append(hooks)

    def remove_mutators(self, hooks: MutatorHooks) -> None:
        self.mutators.remove(hooks)

    def add_callback(self, callback: Callback) -> None:
        if not callable(callback):
            raise TypeError("a collection callback must be callable(phase, info)")
        self.callbacks.append(callback)

    def remove_callback(self, callback: Callback) -> None:
        self.callbacks.remove(callback)

    @property
    def any(self) -> bool:
        return bool(self.mutators or self.callbacks)

    # -- the guard -------------------------------------------------------------------------------
    def check(self) -> None:
        """Every heap entry point: no call from inside a hook or callback."""
        if self.inside and threading.get_ident() in self.inside:
            raise HookReentry("the heap cannot be used from inside a root scanner, a mutator hook or a collection "
                              "callback (a collection is in progress on this thread); only Heap.finalized() may be "
                              "called")

    def run_host(self, fn, *args):
        """Run host code the collection calls (a root scanner) under the same guard."""
        return self._run(fn, *args)

    def _run(self, fn, *args):
        me = threading.get_ident()
        gate = self.gate if me not in self.inside else None  # counted once per thread
        self.inside.add(me)
        if gate is not None:
            gate.host_code(True)
        try:
            return fn(*args)
        finally:
            self.inside.discard(me)
            if gate is not None:
                gate.host_code(False)

    # -- one collection, as the heap drives it ---------------------------------------------------
    def begin(self, collection: int, *, concurrent: bool, automatic: bool, compactor: str) -> CollectionInfo | None:
        """Steps 1 and 2 (before anything changes); None when nothing is registered.
        If a ``stop_mutators`` raises: the stopped ones resumed, the "stop"
        callbacks told (``info.error``), the exception raised."""
        if not (self.mutators or self.callbacks):
            return None
        info = CollectionInfo(collection, concurrent, automatic, compactor)
        self.start(info)
        try:
            self.stop(info)
        except BaseException as exc:
            info.error = exc
            self.finish(info)
            raise
        info._hooks = self
        info._stopped = True
        return info

    def resumed(self, info: CollectionInfo | None) -> None:
        """Step 4; a ``resume_mutators`` error is kept for ``raise_resume_error``."""
        if info is not None and info.__dict__.pop("_stopped", False):
            info._resume_error = self.resume(info)

    def failed(self, info: CollectionInfo | None, exc: BaseException) -> None:
        """The collection raised before its end: resume (if not yet), the "stop" callbacks with the error."""
        if info is None:
            return
        self.resumed(info)
        if info.__dict__.pop("_hooks", None) is not None:
            info.error = exc
            self.finish(info)

    @contextlib.contextmanager
    def pause(self, col, collection: int, *, concurrent: bool, automatic: bool, compactor: str):
        """Around a pause (heap.pause.Collection ``col``): steps 1-2 on entry,
        4 on a normal exit; on an exception, resume and the "stop" callbacks
        with the error. ``col.info`` carries the rest to ``Pause.end``."""
        info = col.info = self.begin(collection, concurrent=concurrent, automatic=automatic, compactor=compactor)
        try:
            yield info
        except BaseException as exc:
            self.failed(info, exc)
            raise
        self.resumed(info)

    def after(self, info: CollectionInfo | None, end, *args) -> None:
        """The end of a collection (``end(*args)``: heap.pause.Pause.end, which
        runs the "stop" callbacks), then a ``resume_mutators`` error, if any."""
        end(*args)
        self.raise_resume_error(info)

    @staticmethod
    def raise_resume_error(info: CollectionInfo | None) -> None:
        err = info.__dict__.pop("_resume_error", None) if info is not None else None
        if err is not None:
            raise err

    # -- the steps ---------------------------------------------------------------------------------
    def start(self, info: CollectionInfo) -> None:
        self._callbacks("start", info)

    def stop(self, info: CollectionInfo) -> None:
        """``stop_mutators`` in order; if one raises, resume the ones stopped and re-raise."""
        stopped: list[MutatorHooks] = []
        for m in self.mutators:
            try:
                self._run(m.stop_mutators, info)
            except BaseException:
                for s in reversed(stopped):
                    try:
                        self._run(s.resume_mutators, info)
                    except Exception as exc:
                        log.error("mutator_hook_failed", step="resume_mutators", error=repr(exc))
                raise
            stopped.append(m)

    def resume(self, info: CollectionInfo) -> BaseException | None:
        """``resume_mutators`` in reverse order, every one of them; the first
        exception, for the caller to raise once the collection is complete."""
        first = None
        for m in reversed(self.mutators):
            try:
                self._run(m.resume_mutators, info)
            except Exception as exc:
                log.error("mutator_hook_failed", step="resume_mutators", error=repr(exc))
                first = first or exc
        return first

    def finish(self, info: CollectionInfo) -> None:
        self._callbacks("stop", info)

    def _callbacks(self, phase: str, info: CollectionInfo) -> None:
        for cb in list(self.callbacks):
            try:
                self._run(cb, phase, info)
            except Exception as exc:
                log.error("callback_failed", phase=phase, callback=repr(cb), error=repr(exc))
