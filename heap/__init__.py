"""remapgc: a compacting heap whose compactor moves live pages with the kernel.

    from heap import Heap
    with Heap(kernel="auto", size=256 << 20) as h:
        a = h.alloc(nbytes=64, nrefs=2)
        b = h.alloc(nbytes=1 << 20)
        a.set_ref(0, b)
        st = h.collect()                  # stop-the-world -> GCStats
        st = h.collect(concurrent=True)   # mutators run during the install -> ConcurrentGCStats

The public API, all of it importable from ``heap``:

Heap and handles
    ``Heap``            the heap (``heap.runtime``): alloc, alloc_many, collect, stats, verify, close
    ``Ref``             a handle to one object; a live Ref is a root
    ``RefArray``        handles to many objects as one root block (``Heap.alloc_many``)
What a heap reports
    ``GCStats``         one collection's counts and times (ns)
    ``ConcurrentGCStats``  what ``collect(concurrent=True)`` returns: GCStats plus the install's own counts
    ``BackgroundCollection``  what ``collect(concurrent=True, wait=False)`` returns: ``done()``,
                        ``wait(timeout)``, ``stats`` once every page is installed
    ``HeapStats``       ``Heap.stats()``: live and free bytes, RSS, without collecting
Errors
    ``HeapError``       base of the heap's own errors
    ``HeapFull``        no room even after a collection (also a MemoryError)
    ``HeapCorrupted``   a broken invariant (``.invariant``, ``.detail``)
    ``HeapClosed``      the heap was closed
    ``CompactionAborted``  the kernel refused to finish an install (an OSError; ``.stats``)
    ``KernelUnsupported``  a backend or compactor asked for is not usable here, with the reason
Kernels
    ``open_kernel``     a Kernel by name: "auto", "linux" or "sim" (the protocol is ``heap.kernel``)
Embedding
    ``ObjectModel``     how an object lies in the arena (a runtime brings its own layout)
    ``DefaultObjectModel``, ``DEFAULT_MODEL``  the layout documented in ``heap.objects``
    ``RootScanner``     references a runtime holds outside the heap's handles
    ``MutatorHooks``    the runtime's threads, stopped and resumed around every pause
                        (``Heap.add_mutator_hooks``)
    ``CollectionInfo``  what hooks and collection callbacks learn (``Heap.add_callback``)
    ``HookReentry``     a heap call from inside a hook, callback or root scanner
    ``WeakRef``         a reference that does not keep its object alive (``Heap.weakref``)

Importing ``heap`` loads nothing else: each name is loaded on first use
(PEP 562), so ``import heap.kernel`` (what the backends do) does not load
the collector. How the parts fit together: docs/design.md.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_API = {
    "Heap": "runtime",
    "Ref": "roots",
    "RefArray": "roots",
    "GCStats": "stats",
    "ConcurrentGCStats": "stats",
    "HeapStats": "stats",
    "BackgroundCollection": "background",
    "HeapError": "errors",
    "HeapFull": "errors",
    "HeapCorrupted": "errors",
    "HeapClosed": "errors",
    "CompactionAborted": "errors",
    "KernelUnsupported": "kernel",
    "open_kernel": "backends",
    "ObjectModel": "objects",
    "DefaultObjectModel": "objects",
    "DEFAULT_MODEL": "objects",
    "RootScanner": "objects",
    "MutatorHooks": "hooks",
    "CollectionInfo": "hooks",
    "HookReentry": "hooks",
    "WeakRef": "weak",
}

__all__ = list(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'heap' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
