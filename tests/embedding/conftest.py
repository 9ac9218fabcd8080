"""What the embedding tests share: every feature runs with both compactors,
stop-the-world and concurrent (``mode``), on an 8 MiB heap of each backend
(``heap``; a module may override it with its own size or state)."""

from __future__ import annotations

import pytest

from heap import Heap
from tests.embedding.modes import MODE_IDS, MODES


@pytest.fixture(params=MODES, ids=MODE_IDS)
def mode(request):
    """(compactor, concurrent)."""
    return request.param


@pytest.fixture
def heap(kernel_name, mode):
    compactor, _ = mode
    h = Heap(kernel=kernel_name, size=8 << 20, compactor=compactor)
    assert h.compactor == compactor
    yield h
    h.close()
