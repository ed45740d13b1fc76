"""Hand each fetched record to its stream without four tasks per record.

faust's consumer hands every record to its stream with
``await self.wait_first(callback(message), self.suspend_flow.wait())``:
mode's ``wait_first`` wraps the callback, the suspension and the consumer's
stopped and crashed flags in four tasks, waits for the first, and cancels the
other three. Per record: four tasks, their cancellations and about a dozen
event loop callbacks, for a callback that nearly always finishes at once (a
put on a stream queue with room). In the workflows benchmark that was a large
part of the analytics processor's CPU (cProfile: ``wait_first`` and the task
creation it causes, 80,000 tasks for 20,000 records).

:func:`deliver_eagerly` gives the consumer a ``wait_first`` that first runs the
callback up to its first suspension, on the caller's stack: finished there,
nothing else is needed. A callback that blocks (a full queue: backpressure),
a suspended flow (a rebalance) or a stopping consumer go through faust's own
``wait_first`` with the callback continued where it stopped, so what faust
does then (cancel the delivery when the flow is suspended) is unchanged.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from mode.services import WaitResults


class _Started:
    """An awaitable continuing a coroutine that already ran up to ``pending``.

    Awaiting it (in a task) forwards what the task sends or throws to the
    coroutine, as a ``yield from`` would, from where it yielded ``pending``.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation too: the coroutine decides
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value


def deliver_eagerly(consumer: Any) -> None:
    """Replace ``consumer.wait_first`` (a faust ``Consumer``) by the eager hand-over.

    Only the drain's two-argument call (the callback, then the suspension's
    wait) takes the eager path; every other call is faust's.
    """
    original = consumer.wait_first
    suspended = consumer.suspend_flow.is_set
    stopped, crashed = consumer._stopped.is_set, consumer._crashed.is_set

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109 (mode's signature)
        if (
            len(coros) != 2
            or not isinstance(coros[0], Coroutine)
            or suspended()
            or stopped()
            or crashed()
        ):
            return await original(*coros, timeout=timeout)
        callback, suspension = coros
        try:
            pending = callback.send(None)
        except BaseException as exc:
            if isinstance(suspension, Coroutine):
                suspension.close()  # never started: closed so it is not "never awaited"
            if isinstance(exc, StopIteration):
                return WaitResults([callback], [exc.value], False)
            raise
        return await original(_Started(callback, pending), suspension, timeout=timeout)

    consumer.wait_first = wait_first
