"""Real-kernel fault injection for the tests: ``bench.realfaults`` says what
Linux can be made to answer here (EBUSY, EEXIST, ENOMEM) and how; the memory
cgroup helpers live there, used by the ENOMEM test's child."""

from bench.realfaults import LimitedCgroup, own_memory_cgroup

__all__ = ["LimitedCgroup", "own_memory_cgroup"]
