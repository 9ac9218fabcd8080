"""Fixtures for the Linux-backend tests: a LinuxKernel, mappings and uffds that clean up after themselves."""

from __future__ import annotations

import pytest

from linux_helpers import Mappings


@pytest.fixture
def k(linux_kernel):
    yield linux_kernel
    linux_kernel.close()


@pytest.fixture
def mem(k):
    m = Mappings(k)
    yield m
    m.close()


@pytest.fixture
def uffd(k):
    u = k.userfaultfd()
    yield u
    u.close()
