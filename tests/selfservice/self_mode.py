"""A pytest plugin that makes every heap self-serving unless it asks for a mode:
run an existing suite in self-service mode with

    python -m pytest -p tests.selfservice.self_mode tests/concurrent tests/reliability

(Heap(faults=...) defaults to "auto", which is "thread" on the simulator and
what the measurement picks on Linux; this turns the default into "self". A
heap that asks for "thread" -- a test of the handler thread itself -- keeps it.)"""

from __future__ import annotations

import heap.spaces as _spaces

_init = _spaces.Spaces.__init__


def _self_serving_init(self, kernel, size, *, thp, faults="auto"):
    _init(self, kernel, size, thp=thp, faults="self" if faults == "auto" else faults)


_spaces.Spaces.__init__ = _self_serving_init
