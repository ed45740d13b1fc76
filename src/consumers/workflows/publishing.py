"""Group publish: the events many runs hand over in one event-loop pass go out together.

Every run publishes the events of each transition before its next effect, a
few events at a time. Published one call each, every call pays for its own
dedup lookup and record, and its records go to Kafka one ``send`` each. Here
the publishes asked for during one pass of the event loop are joined, per
tenant, into one :meth:`~eventfold.publisher.Publisher.publish` (whose larger
sends go out as one record batch per partition): the same events, with the
same ids and keys, acknowledged by Kafka (acks=all) before any caller goes on.
A run's events keep their order (a run has one publish under way at a time,
and its events stay in order within the joined call); a tenant whose publish
fails fails only its own callers, who go on as after a failed publish of their
own. Each caller's events carry its own actor (its run) before they are joined,
and the joined call publishes them as stamped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventfold import tracing
from eventfold.envelope import CloudEvent
from eventfold.groupcommit import Batcher
from eventfold.publisher import Published, Publisher, with_actor

#: A tenant and the events one caller publishes.
Item = tuple[str, Sequence[CloudEvent]]


class GroupPublisher:
    """:class:`~eventfold.publisher.Publisher`'s ``publish``, shared by the runs in flight."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._batcher: Batcher[Item, list[Published]] = Batcher(
            self._many, None, name="workflow-publishes"
        )

    async def publish(
        self, tenant: str, events: Sequence[CloudEvent], *, actor: str
    ) -> list[Published]:
        """Publish ``events`` of ``tenant`` as ``actor``; one result per event, once
        Kafka acknowledged.

        While tracing is on each call publishes on its own: a joined publish runs in
        the batcher's task, so its span would be no child of the run's step and the
        events would carry another run's trace.
        """
        if tracing.enabled():
            return await self._publisher.publish(tenant, events, actor=actor)
        return await self._batcher.submit((tenant, with_actor(events, actor)))

    async def close(self) -> None:
        """Wait for the publishes under way."""
        await self._batcher.close()

    async def _many(self, items: Sequence[Item]) -> list[list[Published] | BaseException]:
        by_tenant: dict[str, list[int]] = {}
        for i, (tenant, _) in enumerate(items):
            by_tenant.setdefault(tenant, []).append(i)
        tenants = list(by_tenant)
        results = await asyncio.gather(
            *(
                self._publisher.publish_stamped(t, [ev for i in by_tenant[t] for ev in items[i][1]])
                for t in tenants
            ),
            return_exceptions=True,
        )
        out: list[list[Published] | BaseException] = [[] for _ in items]
        for tenant, result in zip(tenants, results, strict=True):
            at = 0
            for i in by_tenant[tenant]:
                n = len(items[i][1])
                if isinstance(result, BaseException):
                    out[i] = result
                else:
                    out[i] = result[at : at + n]
                at += n
        return out
