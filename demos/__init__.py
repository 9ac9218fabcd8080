"""Runnable compaction workloads and the ``remapgc`` command line."""
