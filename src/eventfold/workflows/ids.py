"""Ids fixed by what caused them, so every effect of a run happens once.

A run's id is fixed by its tenant, workflow and trigger event: the trigger seen
twice gives the same run. Every event a run writes has an id fixed by run,
step, transition (and attempt), so publishing it again after a crash is the
same event (the projector and the gateway drop the copy). An http step sends
``Idempotency-Key: <run id>:<step id>`` on every attempt; an email step's
``Message-ID`` and a record step's event id are fixed by run and step too.
"""

from __future__ import annotations

import hashlib

#: A run id: ``r`` and 24 hex digits.
RUN_ID_PATTERN = r"^r[0-9a-f]{24}$"


def run_id(tenant: str, workflow: str, trigger_event: str) -> str:
    """The id of the run of ``workflow`` that ``trigger_event`` starts."""
    digest = hashlib.sha256(f"{tenant}\x00{workflow}\x00{trigger_event}".encode()).hexdigest()
    return "r" + digest[:24]


def event_id(run: str, *parts: str | int) -> str:
    """The id of a run's event: ``<run>:<step>:<transition>[:<attempt>]`` or ``<run>:<what>``."""
    return ":".join([run, *(str(p) for p in parts)])


def idempotency_key(run: str, step: str) -> str:
    """The ``Idempotency-Key`` of an http step, the same on every attempt."""
    return f"{run}:{step}"


def message_id(run: str, step: str) -> str:
    """The ``Message-ID`` of an email step."""
    return f"<{run}.{step}@workflows.eventfold>"


def record_event_id(run: str, step: str) -> str:
    """The id of the record event a record step publishes."""
    return f"{run}:{step}:record"
