"""The cyclic garbage collector made cheap per request or event once a process is up.

Each request or event allocates hundreds of container objects (JSON, models,
futures, tasks); at CPython's default first threshold (700) a collection ran
every few requests and traversed the other requests in flight each time, about
a tenth of the gateway's CPU. Freezing what start-up built (modules, schemas,
clients) takes it out of every later collection, and a higher first threshold
collects less often: the same garbage, far fewer traversals. Garbage is still
collected, within some thousands of allocations.
"""

from __future__ import annotations

import gc

#: The collector's generation-0 threshold while serving (CPython's default: 700).
GC_THRESHOLD_0 = 10_000


def settle() -> tuple[int, int, int]:
    """Freeze the start-up heap and raise the first threshold; returns the old thresholds."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = before
    gc.set_threshold(GC_THRESHOLD_0, gen1, gen2)
    return before


def restore(thresholds: tuple[int, int, int]) -> None:
    """Undo :func:`settle` (a test process runs many apps, one after another)."""
    gc.set_threshold(*thresholds)
    gc.unfreeze()
