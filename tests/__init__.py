"""The test matrix of remapgc (see tests/backends.py)."""
