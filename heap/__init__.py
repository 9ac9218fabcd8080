"""remapgc: a compacting heap whose compactor moves live pages with the kernel.

The runtime API (``Heap``, ``Ref``, ``GCStats``) is being built; the seam to
the kernel is ``heap.kernel``.
"""
