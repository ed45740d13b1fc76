"""``GET /v1/processors`` reads each processor's position where the processor keeps it."""

from __future__ import annotations

from typing import Any

from api.processors import SOURCES
from consumers.analytics.processor import app_id
from consumers.archiver.processor import Archiver
from consumers.cache.processor import CacheProcessor
from consumers.projector.processor import Projector
from entrypoints.registry import PROCESSORS
from eventfold.metrics import Metrics
from eventfold.settings import Settings


def test_every_processor_has_a_source_named_as_the_processor_names_its_position() -> None:
    settings = Settings.from_env()
    pool: Any = None  # not used by the constructors
    by_name = {s.name: s for s in SOURCES}
    assert list(by_name) == list(PROCESSORS)
    metrics = Metrics()
    assert (
        by_name["projector"].group(settings) == Projector(settings, pool, metrics).checkpoint_name
    )
    assert by_name["archiver"].group(settings) == Archiver(settings, pool, metrics).checkpoint_name
    assert by_name["cache"].group(settings) == CacheProcessor(settings, pool, metrics).group
    assert by_name["analytics"].group(settings) == app_id(settings)
    assert (by_name["notifier"].store, by_name["sync"].store) == (None, None)
    assert by_name["workflows"].store is None
