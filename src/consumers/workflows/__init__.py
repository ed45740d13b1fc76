"""The workflow processor: starts runs for applied events and drives them step by step.

How it learns what to do, exactly once. The projector, in the batch transaction
that applies an event, writes the processor's inbox (``eventfold.workflow_inbox``,
see :mod:`eventfold.projection.workflows`): one row per enabled workflow whose
trigger the event matches, carrying the record as it stands right after that
event (only the projector knows it: the record may change again in the same
batch), and one row per command (approve, reject, cancel). The row commits with
the event's history row and the projector's checkpoint, so it exists exactly
when the event was applied: a crash before the commit leaves neither, after it
both; a redelivered batch or a re-sent event is dropped by the checkpoint or
the event id before it writes anything. A rebuild (``eventfold replay``) folds
into a shadow schema and writes no row, so a replay starts nothing, and a
workflow created after an event was applied is not in the table that event's
batch read. Rejected events write nothing.

Other designs were weighed. Walking the tenant's history by ``seq`` (as the
notifier does) sees applied events in order but not the record as it stood
after each one, and a hole in ``seq`` must settle for seconds before the walk
steps over it (a trigger → first step latency of seconds). Consuming the topic
and waiting for the projector's checkpoints has the same gap about the record,
and a restart must re-read the log without starting a run twice.

How runs are driven. The processor turns an inbox row into a run row
(``eventfold.workflow_runs``: the run's state, its timer ``wake_at``, and the
events of its last transition, ``pending``) and deletes the inbox row, in one
transaction; the run id is fixed by workflow and trigger event, so doing that
twice inserts nothing. A run whose time has come (``wake_at``) is claimed under
a short lease (renewed while it runs); every transition of the pure state
machine (:mod:`eventfold.workflows.machine`) is written with its events in one
transaction, fenced by the row's ``rev``, and the events are published (acked
by Kafka) before the next effect starts. So a completed step's result is in
PostgreSQL before its events are published and published before the next step
starts: after a kill -9 the next processor republishes the pending events (the
same ids: the projector keeps one) and goes on from the recorded state. A run
holding unpublished events is due at once (``wake_at`` is its timer again once
they are out), so a run that finished in its last transition is claimed for them
too. Only an effect that was under way when the process died runs again, with the
same Idempotency-Key (http), Message-ID (email) or event id (record).

Many runs are driven at once (``EVENTFOLD_WORKFLOW_CONCURRENCY``, and
``EVENTFOLD_WORKFLOW_PER_TENANT`` each), and what they ask for in one pass of
the event loop shares a round trip: their transitions and releases are one
statement (:mod:`eventfold.groupcommit`, each still fenced by its own
``rev``), their events one publish per tenant
(:mod:`consumers.workflows.publishing`), and the runs an inbox batch starts one
insert. Each run still waits for its own write to commit and its own events to
be acknowledged before its next effect: joining changes the round trips, not
the order of anything a run does.

Timers are ``wake_at`` in that table (delays, approval timeouts, retry pauses):
they survive restarts and are claimed within a poll (0.1 s) of their time.
Claims take each tenant's due runs in turn, a few per tenant, with a cap of
runs in flight per tenant, so one tenant's backlog does not hold up another's.
"""
