"""setuptools hook: compile the cffi extensions (API mode) at pip install time.

The Linux backend's extension is built only on Linux; elsewhere the package
installs without it and ``open_kernel("auto")`` picks the simulator.
"""
import sys

from setuptools import setup

cffi_modules = ["heap/_native_build.py:ffibuilder"]  # portable C: the collector's side-table loops
cffi_modules.append("heap/_core_build.py:ffibuilder")  # portable C: the collector's per-object work (heap/csrc/core.c)
cffi_modules.append("sim_backend/_native_build.py:ffibuilder")  # portable C: the simulator's per-word loops
if sys.platform.startswith("linux"):
    cffi_modules.append("uffd_backend/_build.py:ffibuilder")

setup(cffi_modules=cffi_modules)
