"""A pytest plugin that makes every heap serve its faults with the handler
thread unless it asks for a mode (tests.selfservice.self_mode's twin): on
Linux the default "auto" measures and picks "self", so the handler-thread mode
runs the existing suites only through this plugin:

    python -m pytest -p tests.selfservice.thread_mode tests/concurrent tests/reliability"""

from __future__ import annotations

import heap.spaces as _spaces

_init = _spaces.Spaces.__init__


def _handler_thread_init(self, kernel, size, *, thp, faults="auto"):
    _init(self, kernel, size, thp=thp, faults="thread" if faults == "auto" else faults)


_spaces.Spaces.__init__ = _handler_thread_init
