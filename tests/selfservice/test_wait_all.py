"""PageStates.wait_all sees pages a native installer settled without the GIL.

The C fault server (and a self-served SIGBUS) add to ``installed_natively``
without notifying the condition: its MOVE/COPY already woke the faulter. A
waiter that slept on the condition alone then slept until its timeout (the
GIL-hazard test's raw cases hit the watchdog about 1 run in 20)."""

from __future__ import annotations

import threading

import pytest

from heap.program import PageStates


def _settle_natively_once_waiting(states: PageStates, pages: int) -> threading.Thread:
    def native_installer():
        while not states._waiting:  # the waiter is inside wait_all, asleep on the condition
            threading.Event().wait(0.001)
        states.state[:] = 2
        states.installed_natively[0] += pages  # what the C side does: a plain add, no notify

    t = threading.Thread(target=native_installer, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(30)
def test_wait_all_returns_once_a_native_installer_settled_the_last_page():
    states = PageStates(3)
    assert states.claim(0) == 0
    states.settle_one(0, True)  # one page by a Python installer (it notifies)
    installer = _settle_natively_once_waiting(states, 2)
    # an hour: without re-checking, only pytest's timeout would end this wait
    assert states.wait_all(3600.0)
    installer.join(5)


@pytest.mark.timeout(30)
def test_wait_all_still_times_out_when_a_page_stays_claimed():
    states = PageStates(2)
    assert states.claim(1) == 0  # held by an installer that never settles it
    assert states.claim(0) == 0
    states.settle_one(0, True)
    assert not states.wait_all(0.05)
