"""The one retry policy of atlas tasks: how many times, and how soon.

A task that failed transiently asks its policy whether to retry, and the policy raises
Celery's own ``Retry`` (``task.retry(countdown=...)``) or returns, leaving the final
failure to the task::

    @shared_task(name=C.TASK_SPAWN, bind=True, acks_late=True, max_retries=None)
    def spawn(self: Task, session_id: str, sealed: str) -> dict[str, Any]:
        try:
            return service.spawn(session_id, sealed)
        except Exception as exc:
            SPAWN_RETRY.retry(self, exc, retryable=is_transient(exc))
            return service.spawn_failed(session_id, exc)

Budgets that are settings (``ATLAS_SPAWN_MAX_RETRIES``...) are read at retry time, so the
task's Celery ``max_retries`` stays ``None`` and the policy owns the count. This module
does not import Celery: task modules import it without creating an app.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from atlas_tasks import constants as C
from atlas_tasks.config import get_settings

log = logging.getLogger(__name__)


class BoundTask(Protocol):
    """What the policy needs of a bound Celery task (``bind=True``'s ``self``)."""

    @property
    def request(self) -> Any:
        """The current execution (``request.retries``: retries so far)."""

    def retry(
        self,
        *,
        exc: BaseException | None = ...,
        countdown: float | None = ...,
        max_retries: int | None = ...,
    ) -> Exception:
        """Celery's ``Task.retry``: returns (or raises) the ``Retry`` to raise."""


def backoff_s(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: ``min(cap, base·2^attempt)`` scaled by 0.5–1.0.

    Jitter keeps a burst of failed tasks from retrying in lockstep against a provider
    that is already rate limiting us; the 0.5 floor keeps the backoff growing.
    """
    return float(min(cap, base * (2**attempt)) * random.uniform(0.5, 1.0))


@dataclass(frozen=True)
class RetryPolicy:
    """Retry up to ``max_retries`` times after :func:`backoff_s` (``base_s``, ``cap_s``).

    ``max_retries`` is a number, a callable read at retry time (a setting), or ``None``
    for no limit (a poll chain that must survive a Redis or broker outage).
    """

    max_retries: int | Callable[[], int] | None
    base_s: float = 1.0
    cap_s: float = 30.0

    def budget(self) -> int | None:
        """Retries allowed after the first attempt (``None``: unlimited)."""
        limit = self.max_retries
        return limit() if callable(limit) else limit

    def allows(self, retries: int) -> bool:
        """Whether an attempt that already retried ``retries`` times may retry again."""
        budget = self.budget()
        return budget is None or retries < budget

    def countdown(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1``."""
        return backoff_s(retries, base=self.base_s, cap=self.cap_s)

    def retry(
        self, task: BoundTask, exc: BaseException, *, retryable: bool = True, what: str = "task"
    ) -> None:
        """Raise Celery's ``Retry`` for ``task`` if ``retryable`` and the budget allows
        (logged at WARNING, naming ``what``); return otherwise (the caller records the
        final failure)."""
        retries = int(task.request.retries or 0)
        if retryable and self.allows(retries):
            log.warning("%s attempt %d failed (%s); retrying", what, retries + 1, exc)
            self.retry_now(task, exc, retries)

    def retry_now(
        self, task: BoundTask, exc: BaseException | None = None, retries: int | None = None
    ) -> NoReturn:
        """Raise Celery's ``Retry`` for ``task`` unconditionally (after the backoff)."""
        done = int(task.request.retries or 0) if retries is None else retries
        # max_retries=None: the budget is this policy's, not the task decorator's.
        raise task.retry(exc=exc, countdown=self.countdown(done), max_retries=None) from None


#: A session's spawn: ``ATLAS_SPAWN_MAX_RETRIES`` retries on transient errors.
SPAWN_RETRY = RetryPolicy(lambda: get_settings().spawn_max_retries)
#: A terminate (tracked or orphan): ``ATLAS_TERMINATE_MAX_RETRIES`` retries.
TERMINATE_RETRY = RetryPolicy(lambda: get_settings().terminate_max_retries)
#: A serverless job refused at submission: :data:`~atlas_tasks.constants.JOB_SUBMIT_MAX_RETRIES`.
JOB_SUBMIT_RETRY = RetryPolicy(C.JOB_SUBMIT_MAX_RETRIES)
#: Redis or the broker unreachable: retried without limit (the work is idempotent and
#: failing would only lose the message).
INFRA_RETRY = RetryPolicy(None)
#: A job poll chain kept alive through outages: short, capped backoff, no limit.
JOB_POLL_RETRY = RetryPolicy(None, base_s=0.5, cap_s=C.JOB_POLL_CAP_S)

__all__ = [
    "INFRA_RETRY",
    "JOB_POLL_RETRY",
    "JOB_SUBMIT_RETRY",
    "SPAWN_RETRY",
    "TERMINATE_RETRY",
    "BoundTask",
    "RetryPolicy",
    "backoff_s",
]
