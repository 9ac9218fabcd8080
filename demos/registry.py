"""The demos ``remapgc demo`` knows, each with its one-line description.

Modules are imported only when their demo runs, so ``remapgc demo --list``
stays instant and a broken demo cannot break the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class DemoSpec:
    name: str
    description: str
    module: str  # defines run(ctx) -> DemoReport

    def runner(self) -> Callable:
        return importlib.import_module(self.module).run


DEMOS: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        DemoSpec("fragmentation",
                 "mixed object sizes, 70% die at random; compact by moving pages vs by copying bytes; heap map",
                 "demos.fragmentation"),
        DemoSpec("lisp",
                 "a Lisp interpreter whose conses, symbols, strings and closures live in the heap; "
                 "a garbage-heavy program across many collections",
                 "demos.lisp.demo"),
        DemoSpec("concurrent",
                 "mutator threads keep working during concurrent compaction; pauses, fault latency, throughput",
                 "demos.concurrent"),
        DemoSpec("bigarrays",
                 "numpy arrays as large heap objects, half freed, compacted with zero bytes copied (THP on/off)",
                 "demos.bigarrays"),
    )
}
