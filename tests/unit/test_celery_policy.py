"""Celery policy lives in one place: routes, argument redaction, retries, task names."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from celery import Celery

from atlas_tasks import celery_app, task_reprs
from atlas_tasks import constants as C
from atlas_tasks.config import get_settings
from atlas_tasks.task_retry import SPAWN_RETRY, RetryPolicy, backoff_s

#: Every task name constant, ``TASK_SPAWN`` → ``atlas.compute.spawn``.
TASK_NAMES = {name: value for name, value in vars(C).items() if name.startswith("TASK_")}
#: The queue each family of tasks belongs on.
EXPECTED_QUEUE = {
    "compute": C.QUEUE_COMPUTE,
    "jobs": C.QUEUE_JOBS,
    "fly": C.QUEUE_FLY,
    "reaper": C.QUEUE_MAINTENANCE,
    "quotas": C.QUEUE_MAINTENANCE,
    "sessions": C.QUEUE_MAINTENANCE,
}
SEALED_PAYLOAD = "gAAAAABsealed-token-and-request"


@pytest.fixture
def app() -> Celery:
    return celery_app.create_app(get_settings())


def _queue(app: Celery, task_name: str) -> str:
    route = app.amqp.router.route({}, task_name)
    return str(route["queue"].name)


def test_every_task_name_constant_is_routed_to_its_queue(app: Celery) -> None:
    assert len(TASK_NAMES) >= 9
    for constant, name in TASK_NAMES.items():
        family = name.split(".")[1]
        assert _queue(app, name) == EXPECTED_QUEUE[family], constant
        assert _queue(app, name) in celery_app.QUEUES


def test_beat_entries_take_their_queue_from_the_routes(app: Celery) -> None:
    for entry in app.conf.beat_schedule.values():
        assert "queue" not in entry.get("options", {})
        assert _queue(app, entry["task"]) == C.QUEUE_MAINTENANCE


def test_every_registered_atlas_task_is_named_by_a_constant(app: Celery) -> None:
    for module in celery_app.TASK_MODULES:
        importlib.import_module(module)
    registered = {name for name in app.tasks if name.startswith("atlas.")}
    assert registered, "no atlas task registered"
    assert registered <= set(TASK_NAMES.values()), registered - set(TASK_NAMES.values())


def test_secret_arguments_are_named_per_task() -> None:
    assert set(task_reprs.SECRET_ARGS) <= set(TASK_NAMES.values())
    shown = task_reprs.redacted(C.TASK_SPAWN, ["s-1", SEALED_PAYLOAD])
    assert SEALED_PAYLOAD not in str(shown) and "s-1" in shown["argsrepr"]
    assert task_reprs.redacted(
        C.TASK_JOB_RUN, ["j-1", {"input": {"api_key": "k"}}]
    ) == task_reprs.job_run("j-1") | {"kwargsrepr": "{}"}
    assert task_reprs.redacted(C.TASK_TERMINATE, ["s-1", "idle_timeout"]) == {}


def test_the_app_redacts_a_message_sent_without_reprs(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict[str, Any]] = []

    def capture(
        self: Celery, name: str, args: Any = None, kwargs: Any = None, **options: Any
    ) -> None:
        sent.append({"name": name, "args": args, **options})

    monkeypatch.setattr(Celery, "send_task", capture)
    app.send_task(C.TASK_SPAWN, args=["s-1", SEALED_PAYLOAD])  # a call site without reprs
    app.send_task(C.TASK_SPAWN, args=["s-2", SEALED_PAYLOAD], **task_reprs.spawn("s-2"))
    app.send_task(C.TASK_TERMINATE, args=["s-3", "requested"])
    assert sent[0]["args"][1] == SEALED_PAYLOAD  # the message itself is untouched
    assert SEALED_PAYLOAD not in sent[0]["argsrepr"] + sent[0]["kwargsrepr"]
    assert sent[1]["argsrepr"] == task_reprs.spawn("s-2")["argsrepr"]  # the caller's wins
    assert "argsrepr" not in sent[2]  # nothing secret: Celery's own reprs


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for attempt in range(8):
        delay = backoff_s(attempt, base=1.0, cap=30.0)
        assert 0.5 * min(30.0, 2**attempt) <= delay <= min(30.0, 2**attempt)


def _eager_app() -> Celery:
    app = Celery("policy-test", set_as_current=False, broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    return app


@pytest.mark.parametrize(
    ("budget", "retryable", "attempts"),
    [
        (2, True, [0, 1, 2]),  # two retries, then the task records the failure
        (0, True, [0]),
        (5, False, [0]),  # a permanent error is not retried
    ],
)
def test_a_task_retries_through_the_policy(
    budget: int, retryable: bool, attempts: list[int]
) -> None:
    seen: list[int] = []
    policy = RetryPolicy(budget, base_s=0.0)

    def flaky(self: Any) -> str:
        seen.append(int(self.request.retries or 0))
        try:
            raise OSError("provider unreachable")
        except OSError as exc:
            policy.retry(self, exc, retryable=retryable)
            return "failed"

    # Registered without decorator syntax: Celery's decorator is untyped.
    task = _eager_app().task(bind=True, max_retries=None, shared=False)(flaky)
    assert task.apply().get() == "failed"
    assert seen == attempts


def test_a_settings_budget_is_read_at_retry_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_tasks.config import reset_settings

    monkeypatch.setenv("ATLAS_SPAWN_MAX_RETRIES", "1")
    reset_settings()
    assert SPAWN_RETRY.allows(0) and not SPAWN_RETRY.allows(1)
    monkeypatch.setenv("ATLAS_SPAWN_MAX_RETRIES", "3")
    reset_settings()
    assert SPAWN_RETRY.allows(2) and not SPAWN_RETRY.allows(3)
    assert RetryPolicy(None).allows(10_000)
