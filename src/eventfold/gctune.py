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
#: The threshold of stream processors. A projector batch of 2,000 events keeps some
#: 30,000 containers alive while it is read ahead and folded: at 10,000 a catch-up ran
#: ~140 collections that traversed and promoted live batches (0.54-0.70 s of GC in a
#: 100,500-event catch-up); at 50,000, two (0.04 s), for 1.5-3 MB more RSS.
GC_THRESHOLD_0_BATCH = 50_000


def settle(threshold0: int = GC_THRESHOLD_0) -> tuple[int, int, int]:
    """Freeze the start-up heap and raise the first threshold; returns the old thresholds."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = before
    gc.set_threshold(threshold0, gen1, gen2)
    return before


def restore(thresholds: tuple[int, int, int]) -> None:
    """Undo :func:`settle` (a test process runs many apps, one after another)."""
    gc.set_threshold(*thresholds)
    gc.unfreeze()
