"""remapgc: a compacting heap whose compactor moves live pages with the kernel.

    from heap import Heap
    with Heap(kernel="auto", size=256 << 20) as h:
        a = h.alloc(nbytes=64, nrefs=2)
        ...
        st = h.collect()

The seam to the kernel is ``heap.kernel``; the object layout is documented in
``heap.objects``.
"""

from .errors import CompactionAborted, HeapClosed, HeapCorrupted, HeapError, HeapFull
from .install import install_page_range
from .objects import DEFAULT_MODEL, DefaultObjectModel, ObjectModel, RootScanner
from .roots import Ref, RefArray
from .runtime import Heap
from .stats import GCStats, HeapStats

__all__ = [
    "Heap", "Ref", "RefArray", "GCStats", "HeapStats",
    "HeapError", "HeapFull", "HeapCorrupted", "HeapClosed", "CompactionAborted",
    "ObjectModel", "RootScanner", "DefaultObjectModel", "DEFAULT_MODEL", "install_page_range",
]
