"""The fork rule: no heap is mid-cycle when the process forks.

Why (docs/reliability.md, "fork"): during a cycle the arena's pages not yet
installed exist only in the from-space, and the arena is registered with a
userfaultfd. A child forked then inherits the arena *without* the
registration (remapgc asks for no UFFD_FEATURE_EVENT_FORK) and without the
compactor and fault-handler threads: it would read zeros where objects are.
And the userfaultfd descriptor the child inherits acts on the *parent's*
address space, so a collection in the child would move the parent's pages.

What this module does, through ``os.register_at_fork`` (``os.fork`` and
everything built on it, e.g. multiprocessing's "fork" start method):

* before: for every open heap, take its lock (so no collection or access is
  in flight or can start), finish a running concurrent cycle, install what
  an aborted one left pending, and release the last from-space. The fork
  happens with every heap consistent and idle.
* after, in the parent: drop the locks.
* after, in the child: drop the locks; give each heap a userfaultfd of its
  own (the child's address space), or, if that is refused, switch it to the
  copying compactor (when the kernel says ``reopen_uffd_after_fork``); let
  each kernel redo what it cannot share (``after_fork_in_child``).

A fork the hooks do not see (a C-level fork, ``kernel.fork()``) is still
safe for the parent: pages shared with the child make UFFDIO_MOVE answer
EBUSY, and the install copies those pages instead (``heap.install``).
"""

from __future__ import annotations

import os
import threading
import weakref

from .events import get_logger

log = get_logger("remapgc.heap")

_heaps: "weakref.WeakSet" = weakref.WeakSet()
_registry_lock = threading.Lock()
_held: list = []  # heaps whose lock the forking thread holds across the fork
_enabled = True


def track(heap) -> None:
    """A new heap is subject to the fork rule (called by Heap.__init__)."""
    with _registry_lock:
        _heaps.add(heap)


def set_enabled(on: bool) -> bool:
    """Turn the hooks off (tests that show what the rule prevents); returns the old setting."""
    global _enabled
    old, _enabled = _enabled, bool(on)
    return old


def quiesce(heap) -> None:
    """With the heap lock held: no cycle running, nothing pending, nothing in flight."""
    heap.quiesce()


def _before() -> None:
    if not _enabled:
        return
    with _registry_lock:
        heaps = sorted(_heaps, key=id)  # one global order: two forking threads cannot deadlock
    for heap in heaps:
        heap.lock.acquire()
        _held.append(heap)
        try:
            quiesce(heap)
        except Exception as exc:  # the fork goes on (a failed pre-fork hook cannot stop it): say so
            log.error("fork_quiesce_failed", error=repr(exc))


def _release_all() -> list:
    heaps = list(_held)
    _held.clear()
    for heap in reversed(heaps):
        try:
            heap.lock.release()
        except RuntimeError:
            pass
    return heaps


def _after_in_parent() -> None:
    _release_all()


def _after_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread may have held it at the fork
    if not _enabled:
        return
    heaps = _release_all()
    kernels = set()
    for heap in heaps:
        k = heap.kernel
        if id(k) not in kernels:
            kernels.add(id(k))
            k.after_fork_in_child()
        heap.after_fork_in_child()  # a userfaultfd of the child's own, where the kernel needs one


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
