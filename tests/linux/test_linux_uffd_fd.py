"""What only a real userfaultfd descriptor shows: poll() on it.

The protocol behaviour of the same calls (EAGAIN, EBADF after close, the
number freed once a waiting thread left) is tested on every backend in
tests/kernel/.
"""

from __future__ import annotations

import errno
import select
import threading

import pytest

from heap.kernel import MADV_DONTNEED, PAGE_SIZE, UFFD_FEATURE_EVENT_REMOVE, UFFD_FEATURE_MOVE, UffdError

PS = PAGE_SIZE


def expect_uffd_error(call, err: int, moved: int = 0) -> None:
    with pytest.raises(UffdError) as exc:
        call()
    assert (exc.value.errno, exc.value.moved) == (err, moved), str(exc.value)


# a pending non-cooperative event: EAGAIN without progress (the event is seen by polling the fd)
@pytest.mark.timeout(30)
def test_pending_remove_event_is_eagain_with_nothing_moved(k, mem):
    uffd = k.userfaultfd(UFFD_FEATURE_MOVE | UFFD_FEATURE_EVENT_REMOVE)
    try:
        src, dst, other = mem.filled(1), mem(1), mem.filled(2)
        uffd.register(dst, PS)
        uffd.register(other, 2 * PS)
        # madvise(DONTNEED) on a registered range waits until the REMOVE event is read
        remover = threading.Thread(target=k.madvise, args=(other, 2 * PS, MADV_DONTNEED), daemon=True)
        remover.start()
        poller = select.poll()
        poller.register(uffd.fd, select.POLLIN)
        assert poller.poll(10_000), "the REMOVE event never arrived"

        expect_uffd_error(lambda: uffd.move(dst, src, PS), errno.EAGAIN, moved=0)

        assert uffd.read_events(timeout=5) == []  # the REMOVE event is consumed, not a fault
        remover.join(10)
        assert not remover.is_alive()
        assert uffd.move(dst, src, PS) == PS
    finally:
        uffd.close()
