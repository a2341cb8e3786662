"""The consumer step that keeps task events unbuffered under thread pools."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.events.dispatcher import EventDispatcher
from kombu.connection import Connection

from atlas_tasks.celery_app import create_app
from atlas_tasks.worker_events import UnbufferedTaskEvents, sends_events_off_loop


class _Recorder(EventDispatcher):  # type: ignore[misc]  # untyped Celery base
    """A dispatcher without a broker: records what it publishes."""

    def __init__(self) -> None:
        super().__init__(
            connection=Connection("memory://"),
            hostname="w1",
            enabled=True,
            buffer_group=["task"],
            on_send_buffered=lambda: None,
        )
        self.published: list[Any] = []

    def _publish(self, event: Any, producer: Any, routing_key: str, **_: Any) -> None:
        self.published.append((routing_key, event))


def _consumer(pool: Any, dispatcher: EventDispatcher) -> Any:
    return SimpleNamespace(pool=pool, event_dispatcher=dispatcher)


def test_step_is_installed_after_celery_events_step() -> None:
    app = create_app()
    assert UnbufferedTaskEvents in app.steps["consumer"]
    assert "celery.worker.consumer.events:Events" in UnbufferedTaskEvents.requires


def test_thread_pool_events_are_published_at_once() -> None:
    dispatcher = _Recorder()
    dispatcher.send("task-started", uuid="t1")  # buffered before the step runs
    assert dispatcher.published == []
    step = UnbufferedTaskEvents.__new__(UnbufferedTaskEvents)
    step.start(_consumer(ThreadPool.__new__(ThreadPool), dispatcher))
    assert [key for key, _ in dispatcher.published] == ["task.multi"]  # old buffer flushed
    dispatcher.send("task-succeeded", uuid="t1")
    assert dispatcher.published[-1][0] == "task.succeeded"
    assert dispatcher.published[-1][1]["uuid"] == "t1"


def test_loop_thread_pools_keep_buffering() -> None:
    for pool in (PreforkPool.__new__(PreforkPool), SoloPool.__new__(SoloPool)):
        assert not sends_events_off_loop(pool)
        dispatcher = _Recorder()
        UnbufferedTaskEvents.__new__(UnbufferedTaskEvents).start(_consumer(pool, dispatcher))
        assert set(dispatcher.buffer_group) == {"task"}
    assert sends_events_off_loop(ThreadPool.__new__(ThreadPool))


def test_worker_without_dispatcher_is_left_alone() -> None:
    consumer = SimpleNamespace(pool=ThreadPool.__new__(ThreadPool), event_dispatcher=None)
    UnbufferedTaskEvents.__new__(UnbufferedTaskEvents).start(consumer)  # events off (no -E)
    assert consumer.event_dispatcher is None  # nothing created or attached
