"""Task events that survive the ``threads`` worker pool (what Flower shows).

Celery 5.6 buffers ``task-*`` events whenever the worker runs an event loop, and flushes
the buffer from that loop. With the ``threads`` pool (our default) the ``task-started`` /
``task-succeeded`` events are sent from pool threads, which append to the buffer without
the dispatcher's lock and schedule the flush by writing to ``hub._ready`` directly, past
its lock and without waking the loop. A flush can then clear events appended while it was
publishing, or never be scheduled at all, and Flower shows a finished spawn as
``RECEIVED`` for good (celery/celery#10434, fixed after 5.6). Our tests caught it about
one run in ten.

:class:`UnbufferedTaskEvents` turns the buffering off for pools whose tasks run off the
loop thread, so every event is published at once under the dispatcher's lock. Prefork
(events sent from the parent's loop) and solo (tasks run on the loop thread) keep it.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

#: Pools that send task events from the event-loop thread, where buffering is safe.
LOOP_THREAD_POOLS = frozenset({"celery.concurrency.prefork", "celery.concurrency.solo"})


def sends_events_off_loop(pool: Any) -> bool:
    """Whether ``pool`` runs tasks (and so sends their events) on other threads."""
    return type(pool).__module__ not in LOOP_THREAD_POOLS


class UnbufferedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]  # untyped base
    """Consumer step run after Celery's ``Events`` step on every (re)connect: publish task
    events immediately when the pool sends them from threads."""

    requires = ("celery.worker.consumer.events:Events",)

    def start(self, parent: Any) -> None:
        """Disable the task-event buffer of the dispatcher just created, if unsafe."""
        dispatcher = getattr(parent, "event_dispatcher", None)
        if dispatcher is None or not sends_events_off_loop(getattr(parent, "pool", None)):
            return
        dispatcher.flush(errors=False, groups=True)  # anything buffered so far goes out
        dispatcher.buffer_group = frozenset()
        dispatcher.on_send_buffered = None
