"""Events over real Redis: replay then live, no loss, no duplicates, async variant."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from atlas_tasks import events
from atlas_tasks.config import reset_settings
from atlas_tasks.redis_conn import reset_redis_clients

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _use_test_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    reset_redis_clients()


def test_late_subscriber_replays_then_follows_live() -> None:
    events.publish("s1", "status", {"status": "spawning"})
    events.publish("s1", "status", {"status": "running"})
    got: list[events.Event] = []

    def later() -> None:
        time.sleep(0.3)
        events.publish("s1", "terminating", {"reason": "requested"})
        events.publish("s1", "status", {"status": "terminated"})

    threading.Thread(target=later).start()
    for event in events.subscribe("s1", timeout=5, until=("terminated",)):
        got.append(event)
    assert [(e.type, e.data.get("status") or e.data.get("reason")) for e in got] == [
        ("status", "spawning"),
        ("status", "running"),
        ("terminating", "requested"),
        ("status", "terminated"),
    ]
    ids = [str(e.id) for e in got]
    assert len(set(ids)) == 4 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_events_racing_the_replay_arrive_once() -> None:
    """Events published while the subscriber replays are neither lost nor doubled."""
    stop = threading.Event()

    def burst() -> None:
        for i in range(200):
            events.publish("s2", "output", {"n": i})
        events.publish("s2", "status", {"status": "terminated"})
        stop.set()

    thread = threading.Thread(target=burst)
    thread.start()
    seen = [
        e.data["n"]
        for e in events.subscribe("s2", timeout=5, until=("terminated",))
        if e.type == "output"
    ]
    thread.join()
    assert seen == list(range(200))


def test_resume_after_last_id() -> None:
    first = events.publish("s3", "status", {"status": "spawning"})
    events.publish("s3", "status", {"status": "running"})
    resumed = list(events.subscribe("s3", after=first, timeout=0.3))
    assert [e.data["status"] for e in resumed] == ["running"]


def test_unknown_topic_is_validation_error() -> None:
    with pytest.raises(Exception) as info:
        events.publish("x", "status", topic="nope")
    assert getattr(info.value, "kind", None) == "validation"


def test_async_subscribe(redis_url: str) -> None:
    events.publish("s4", "status", {"status": "running"})

    async def main() -> list[str]:
        out = []

        async def later() -> None:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(events.publish, "s4", "status", {"status": "terminated"})

        task = asyncio.create_task(later())
        async for event in events.asubscribe("s4", timeout=5, until=("terminated",)):
            out.append(event.data["status"])
        await task
        return out

    assert asyncio.run(main()) == ["running", "terminated"]


def test_async_resume_after_last_id_ends_on_idle_timeout() -> None:
    """asubscribe replays only what follows ``after``, then stops after the idle timeout."""
    first = events.publish("s5", "status", {"status": "spawning"})
    events.publish("s5", "status", {"status": "running"})

    async def main() -> list[str]:
        return [e.data["status"] async for e in events.asubscribe("s5", after=first, timeout=0.3)]

    assert asyncio.run(main()) == ["running"]
