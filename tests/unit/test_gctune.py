"""The collector's settings of served and batch processes, and their undoing."""

from __future__ import annotations

import gc

from eventfold import gctune


def test_settle_sets_the_first_threshold_and_restore_undoes_it() -> None:
    before = gc.get_threshold()
    old = gctune.settle(gctune.GC_THRESHOLD_0_BATCH)
    try:
        assert old == before
        assert gc.get_threshold() == (gctune.GC_THRESHOLD_0_BATCH, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gctune.restore(old)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_served_processes_keep_the_lower_threshold() -> None:
    old = gctune.settle()
    try:
        assert gc.get_threshold()[0] == gctune.GC_THRESHOLD_0 < gctune.GC_THRESHOLD_0_BATCH
    finally:
        gctune.restore(old)
