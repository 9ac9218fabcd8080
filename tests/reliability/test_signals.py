"""SIGINT / SIGTERM during a collection reach the caller once the heap is consistent.

The end-to-end cases run a child (tests/reliability/signal_script.py) that
collects a 200k-object heap over and over; the test sends it the signal from
outside. The child reports where the exception came out (Heap.collect, after
heap.signals held it to the end of the collection), then verifies the heap,
walks its objects and collects again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from heap import signals

CASES = [("INT", "stw"), ("TERM", "stw"), ("INT", "concurrent"), ("TERM", "concurrent")]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("sig,mode", CASES, ids=[f"SIG{s}-{m}" for s, m in CASES])
def test_a_signal_during_collect_reaches_the_caller_after_the_heap_is_consistent(kernel_name, sig, mode):
    child = subprocess.Popen([sys.executable, "-m", "tests.reliability.signal_script", kernel_name, sig, mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()[-3000:]
        time.sleep(0.5)  # the child is now collecting, back to back
        child.send_signal(getattr(signal, f"SIG{sig}"))
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["outcome"] == ("KeyboardInterrupt" if sig == "INT" else "Terminated"), res
    assert res["raised_from"] == ["collect"], res
    assert res["held_until_the_end"], res  # delivered by heap.signals once the collection was over
    assert res["verify"] == "ok", res
    assert res["whole"] == 2000 and res["bulk_links_whole"], res
    assert res["usable_after"], res


# -- the deferral itself, in this process (pytest runs tests in the main thread) -------------------
@pytest.mark.timeout(10)
def test_sigint_inside_deferred_is_raised_at_its_end():
    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)
            reached_end = True
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.timeout(10)
def test_a_programs_sigterm_handler_runs_after_the_deferred_block():
    calls = []
    old = signal.signal(signal.SIGTERM, lambda s, f: calls.append(("handler", s)))
    try:
        with signals.deferred():
            signal.raise_signal(signal.SIGTERM)
            calls.append("body done")
        assert calls == ["body done", ("handler", signal.SIGTERM)]
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.timeout(10)
def test_the_third_sigint_goes_through_at_once():
    """A way out of a collection that does not end."""
    progressed = []
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            for i in range(3):
                signal.raise_signal(signal.SIGINT)
                progressed.append(i)
    assert progressed == [0, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.timeout(10)
def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.timeout(30)
def test_a_sigint_in_the_middle_of_alloc_arrives_after_it_and_the_heap_verifies(kernel_name, monkeypatch):
    """The signal lands after the object is placed and before it is recorded:
    without the deferral the page kinds and the side tables disagree."""
    from heap import Heap

    with Heap(kernel=kernel_name, size=1 << 20) as h:
        keep = h.alloc(100)
        keep.write(b"k" * 100)
        record = h._table.append

        def interrupted_record(*args):
            signal.raise_signal(signal.SIGINT)
            return record(*args)

        monkeypatch.setattr(h._table, "append", interrupted_record)
        with pytest.raises(KeyboardInterrupt):
            h.alloc(5000, 1)  # a large object: it takes pages of its own
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        h.verify()
        assert keep.read(100) == b"k" * 100
        h.alloc(300)
        h.collect()
        h.verify()
