"""A heap's life cycle, run by test_events.py in a fresh interpreter:

    python -m tests.packaging.lifecycle_script BACKEND RESULT.json [--log-debug]

allocates objects and garbage, collects stop-the-world and concurrently, and
closes the heap; what it saw goes to RESULT.json, never to stdout or stderr
(the test asserts both stay empty). ``--log-debug`` first configures logging
as a host would: ``logging.basicConfig(level=logging.DEBUG)``, with the
logger's name first on each line.
"""

from __future__ import annotations

import json
import logging
import sys

LOG_FORMAT = "%(name)s %(levelname)s %(message)s"


def life_cycle(backend: str) -> dict:
    from heap import Heap

    heap = Heap(kernel=backend, size=8 << 20)
    kept = []
    for i in range(200):
        ref = heap.alloc(48 + 4096 * (i % 3 == 0), 1)
        ref.write(bytes([i % 251]) * 48)
        ref.set_ref(0, kept[-1] if kept else None)
        kept.append(ref)
        heap.alloc(300)  # garbage between survivors: the collections have something to compact
    stop_the_world = heap.collect()
    for _ in range(200):
        heap.alloc(300)
    concurrent = heap.collect(concurrent=True)
    heap.verify()
    whole = all(ref.read(48) == bytes([i % 251]) * 48 for i, ref in enumerate(kept))
    heap.close()
    return {"backend": heap.kernel.name, "whole": whole,
            "live": [stop_the_world.live_objects, concurrent.live_objects]}


def main() -> None:
    backend, result = sys.argv[1], sys.argv[2]
    if "--log-debug" in sys.argv[3:]:
        logging.basicConfig(level=logging.DEBUG, format=LOG_FORMAT)
    with open(result, "w") as fh:
        json.dump(life_cycle(backend), fh)


if __name__ == "__main__":
    main()
