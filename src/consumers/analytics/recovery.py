"""Two repairs to faust's table recovery (faust-streaming 0.15.3), the analytics worker's restart.

**Where a restore ends** (:func:`restore_to_last_record`). faust restores a
changelog partition until it has applied the record at "end - 1", the end
coming from its consumer thread's ``_highwaters``. Its own answer (a cached
last stable offset, None until a fetch came in) made a restarted worker restore
nothing, or stop early. The last stable offset itself is one past a
transaction marker, never a record: faust then waited for two idle 5-second
polls and ended the restore from the consumer's fetch position ("Aborted tx
until highwater"), 10 s late. The offset after the last committed record ends
the restore the moment that record is applied.

**In which order the streams start again** (:func:`resume_streams_after_clear`).
At the end of a recovery faust resumed the source partitions, sought them to
the committed offsets, and only then resumed its flow control, which *clears*
every stream queue. The consumer had prefetched the source partitions during
the restore, so records reached the agent's queue between the resume and the
clear: those the agent had not taken yet were dropped, the fetch loop moved
its read offset past them, and the seek's re-read was then skipped as already
seen. The agent applied the records around the dropped one and the commit
covered it: the count lost in about one SIGKILL test run of eight (issue 21,
item 9; the ``seen`` changelog of a failed run held every source offset of the
partition but one). The queues are now cleared first, the partitions sought,
and only then resumed: nothing of a source partition flows before the clear.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

#: How many offsets before the end a changelog's tail is first read for its last record.
TAIL_WINDOW = 64
#: A tail read gives up after this long (faust then ends the restore its own way).
TAIL_SECONDS = 30.0


async def last_record_ends(
    bootstrap: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Per partition, the offset just after its last committed record (its start when it has none).

    Each tail is read (``read_committed``, from ``TAIL_WINDOW`` offsets before the
    last stable offset, further back while it holds no committed record) on a
    consumer of its own.
    """
    if not partitions:
        return {}
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await reader.start()
    try:
        reader.assign(partitions)
        stable = await reader.end_offsets(partitions)
        starts = await reader.beginning_offsets(partitions)
        ends = {tp: starts[tp] for tp in partitions}
        async with asyncio.timeout(TAIL_SECONDS):
            for tp in partitions:
                end, window = stable[tp], TAIL_WINDOW
                while end > starts[tp]:
                    begin = max(starts[tp], end - window)
                    reader.seek(tp, begin)
                    last = -1
                    while await reader.position(tp) < end:
                        got = await reader.getmany(tp, timeout_ms=500)
                        last = max([last, *(m.offset for m in got.get(tp, ()) if m.offset < end)])
                    if last >= 0:
                        ends[tp] = last + 1
                        break
                    if begin <= starts[tp]:
                        break  # nothing committed at all: nothing to restore
                    window *= 8
    finally:
        await reader.stop()
    return ends


async def beginning_offsets(
    bootstrap: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The first offset of each partition, asked on a consumer of its own."""
    if not partitions:
        return {}  # aiokafka waits for its timeout when asked about none
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        return dict(await reader.beginning_offsets(partitions))
    finally:
        await reader.stop()


def restore_to_last_record(consumer: Any, bootstrap: str) -> None:
    """Make the faust ``consumer`` restore each changelog up to its last committed record.

    The changelogs' first offsets, which faust asks next, are asked on a
    consumer of their own too: through faust's consumer thread the answer
    waited for that thread's current poll (1.4 s of a restarted worker's 4).
    """
    thread = consumer._thread

    async def record_ends(partitions: list[Any]) -> Any:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        return await last_record_ends(bootstrap, tps)

    async def earliest(*partitions: Any) -> Any:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        return await beginning_offsets(bootstrap, tps)

    thread._highwaters = record_ends
    thread.earliest_offsets = earliest


def resume_streams_after_clear(app: Any, bootstrap: str) -> None:
    """Replace the end of faust's recovery on ``app``: clear the stream queues, seek the
    source partitions to their committed offsets, and only then resume them.

    faust's ``Recovery.on_recovery_completed`` with its steps reordered (the
    rest is as faust has it); set before the app starts. faust's seek
    (aiokafka's ``seek_to_committed``) leaves a partition with no committed
    offset (or offset 0) where its fetch is: a partition the group never
    committed (taken over from a worker killed before its first commit) is sought
    to the log's start here, or the records prefetched during the restore, cleared
    with the queues, would never be read again.
    """
    recovery = app.tables.recovery

    async def on_recovery_completed(generation_id: int = 0) -> None:
        consumer = app.consumer
        recovery.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        recovery._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    recovery.actives_for_table[table], recovery.standbys_for_table[table]
                )
            )
            for table in recovery.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            recovery.log.warning("Recovery rebalancing again")
            return
        # Resuming the flow clears the stream queues: before any source record can be in them.
        app.flow_control.resume()
        if assignment:
            recovery.log.info("Seek stream partitions to committed offsets.")
            await recovery._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            sources = [TopicPartition(tp.topic, tp.partition) for tp in assignment
                       if not recovery._is_changelog_tp(tp)]  # fmt: skip
            starts = await committed_positions(bootstrap, app.conf.id, sources)
            for tp, offset in starts.items():
                await consumer.seek(tp, offset)
        consumer.resume_partitions({tp for tp in assignment if not recovery._is_changelog_tp(tp)})
        recovery.completed.set()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        recovery.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            recovery.tables.on_standbys_ready()
        app.on_rebalance_end()
        recovery.log.info("Worker ready")

    recovery.on_recovery_completed = on_recovery_completed


async def committed_positions(
    bootstrap: str, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where ``group`` resumes each partition: its committed offset, else the log's start."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        found = {tp: await reader.committed(tp) for tp in partitions}
        missing = [tp for tp, offset in found.items() if offset is None]
        starts = await reader.beginning_offsets(missing) if missing else {}
        return {tp: int(found[tp] if found[tp] is not None else starts[tp]) for tp in partitions}
    finally:
        await reader.stop()


async def records_between(bootstrap: str, tp: TopicPartition, start: int, end: int) -> int:
    """How many committed records partition ``tp`` holds at offsets ``start`` to ``end - 1``."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await reader.start()
    try:
        reader.assign([tp])
        reader.seek(tp, start)
        found = 0
        async with asyncio.timeout(TAIL_SECONDS):
            while await reader.position(tp) < end:
                got = await reader.getmany(tp, timeout_ms=500)
                found += sum(1 for m in got.get(tp, ()) if start <= m.offset < end)
        return found
    finally:
        await reader.stop()
