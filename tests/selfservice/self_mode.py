"""A pytest plugin that makes every heap self-serving unless it asks otherwise:
run an existing suite in self-service mode with

    python -m pytest -p tests.selfservice.self_mode tests/concurrent tests/reliability

(Heap(faults=...) defaults to "thread"; this changes the default only.)"""

from __future__ import annotations

import heap.spaces as _spaces

_init = _spaces.Spaces.__init__


def _self_serving_init(self, kernel, size, *, thp, faults="self"):
    _init(self, kernel, size, thp=thp, faults=faults if faults != "thread" else "self")


_spaces.Spaces.__init__ = _self_serving_init
