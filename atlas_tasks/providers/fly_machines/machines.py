"""Fly Machines: create (duplicate-safe, then wait for ``started``), get, list, stop, start,
destroy, and ``/wait``.

Statuses (reference notes §4.1): create answers 200 (201 accepted too), stop/start 200,
``DELETE ...?force=true`` 200 (204 accepted). ``GET .../wait?state=&timeout=`` answers 200
when the state is reached and **408** when the timeout passes first; a 408 is an expected
answer here (the machine keeps booting), never an error, and is not retried.

Errors are ``{"error": "..."}``; 404 (unknown app or machine) raises ``NotFoundError``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from atlas_tasks.errors import AtlasError, ProviderError
from atlas_tasks.providers.base import filter_computes
from atlas_tasks.providers.fly_machines import translate
from atlas_tasks.providers.fly_machines.client import machines_path
from atlas_tasks.providers.http import HttpClient, create_once
from atlas_tasks.specs import ComputeStatus

logger = logging.getLogger(__name__)

#: Fly's default and largest ``timeout`` of one ``/wait`` call, in seconds.
MAX_WAIT_S = 60

#: How long a create waits for ``started`` unless told otherwise (one ``/wait`` call).
DEFAULT_WAIT_TIMEOUT_S = 60.0

Machine = dict[str, Any]


def create(
    api: HttpClient,
    app: str,
    body: dict[str, Any],
    *,
    max_retries: int,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> Machine:
    """Create a machine so that exactly one results, then wait for it to start.

    ``POST /v1/apps/{app}/machines`` goes out with ``idempotent=False``: the HTTP layer
    retries only 429 and connect failures. After a failure that may have created the
    machine (5xx, read timeout, reset) we wait one backoff and look it up by
    ``body["name"]``: found → use it; not found → create again, at most ``max_retries``
    more times. Without a name nothing can be looked up, so the error is raised (flagged
    ``maybe_created``) rather than risking a second machine.

    Then ``/wait?state=started`` (see :func:`wait_for_state`) and a fresh ``GET``. Once the
    machine exists nothing raises any more: a failed or timed-out wait returns the machine as
    last seen (``created``/``starting`` → provisioning), because raising would leak it.

    Args:
        body: the create body (:func:`translate.machine_create_body`).

    Returns:
        The Machine object.

    Raises:
        AtlasError: the create failed.
    """
    name = body.get("name")
    machine = _create_once_or_find(
        api, app, body, name if isinstance(name, str) else None, max_retries
    )
    machine_id = str(machine["id"])
    if translate.machine_status(machine.get("state")) != ComputeStatus.PROVISIONING:
        return machine
    try:
        if wait_for_state(api, app, machine_id, "started", wait_timeout_s):
            return get(api, app, machine_id)
    except AtlasError as err:
        logger.warning(
            "fly: machine %s of %s was created but waiting for it failed: %s", machine_id, app, err
        )
    return machine


def _create_once_or_find(
    api: HttpClient, app: str, body: dict[str, Any], name: str | None, max_retries: int
) -> Machine:
    def post() -> Machine:
        answer = api.call(
            "POST", machines_path(app), json=body, expect=(200, 201), idempotent=False
        )
        return _machine(answer.data)

    return create_once(
        post,
        name=name,
        find_by_name=lambda n: find_by_name(api, app, n),
        max_retries=max_retries,
        sleep=api.sleep,
        backoff=api.backoff_delay,
        label="fly",
        kind="machine",
        id_of=lambda m: m.get("id"),
    )


def wait_for_state(
    api: HttpClient,
    app: str,
    machine_id: str,
    state: str,
    timeout_s: float,
    *,
    instance_id: str | None = None,
) -> bool:
    """Block on ``GET .../wait?state=<state>&timeout=<s>`` until reached or timed out.

    Fly caps one wait at 60 s, so longer timeouts take several calls. ``timeout_s <= 0``
    does not wait at all.

    Returns:
        True when the machine reached ``state``; False when the time ran out (408).
    """
    remaining = float(timeout_s)
    while remaining > 0:
        step = max(1, min(MAX_WAIT_S, math.ceil(remaining)))
        params: dict[str, Any] = {"state": state, "timeout": step, "instance_id": instance_id}
        answer = api.call(
            "GET",
            machines_path(app, machine_id, "/wait"),
            params=params,
            expect=(200, 408),
            timeout_s=step + api.timeout_s,
        )
        if answer.status == 200:
            return True
        remaining -= step
    return False


def get(api: HttpClient, app: str, machine_id: str) -> Machine:
    """``GET /v1/apps/{app}/machines/{id}``; 404 raises ``NotFoundError``."""
    return _machine(api.call("GET", machines_path(app, machine_id)).data)


def list_machines(api: HttpClient, app: str, *, region: str | None = None) -> list[Machine]:
    """``GET /v1/apps/{app}/machines`` (destroyed machines are not listed by Fly)."""
    answer = api.call("GET", machines_path(app), params={"region": region})
    return [_machine(item) for item in translate.machines_from_list(answer.data)]


def find_by_name(api: HttpClient, app: str, name: str) -> Machine | None:
    """The not-destroyed machine of ``app`` named exactly ``name`` (a started one
    preferred), or None."""
    live = [
        m
        for m in list_machines(api, app)
        if m.get("name") == name
        and translate.machine_status(m.get("state")) != ComputeStatus.TERMINATED
    ]
    live.sort(key=lambda m: translate.machine_status(m.get("state")) != ComputeStatus.RUNNING)
    return live[0] if live else None


def stop(api: HttpClient, app: str, machine_id: str, wait_timeout_s: float) -> None:
    """``POST .../stop``, then wait (bounded) for ``stopped``. Safe to retry.

    Fly stops asynchronously (``stopping``); waiting makes ``stop`` mean "stopped" as the
    provider contract expects. ``/wait`` for ``stopped`` needs the ``instance_id``, read
    first. A wait that times out is not an error: the stop is under way.
    """
    instance_id = _str(get(api, app, machine_id).get("instance_id"))
    api.call(
        "POST", machines_path(app, machine_id, "/stop"), expect=(200, 201, 204), idempotent=True
    )
    try:
        wait_for_state(api, app, machine_id, "stopped", wait_timeout_s, instance_id=instance_id)
    except AtlasError as err:
        logger.warning("fly: machine %s is stopping but waiting for it failed: %s", machine_id, err)


def start(api: HttpClient, app: str, machine_id: str) -> None:
    """``POST .../start`` (the machine goes ``starting`` → ``started``). Safe to retry."""
    api.call(
        "POST", machines_path(app, machine_id, "/start"), expect=(200, 201, 204), idempotent=True
    )


def destroy(api: HttpClient, app: str, machine_id: str) -> None:
    """``DELETE .../{id}?force=true`` (stops a running machine too); 404 raises
    ``NotFoundError``."""
    api.call("DELETE", machines_path(app, machine_id), params={"force": "true"}, expect=(200, 204))


def create_app(api: HttpClient, name: str, org: str, *, network: str | None = None) -> Any:
    """``POST /v1/apps`` ``{"app_name", "org_slug"}`` (201). Not retried blindly."""
    body: dict[str, Any] = {"app_name": name, "org_slug": org}
    if network:
        body["network"] = network
    return api.call("POST", "/v1/apps", json=body, expect=(201, 200), idempotent=False).data


def _machine(data: Any) -> Machine:
    """``data`` if it is a Machine object with an id.

    Raises:
        ProviderError: anything else.
    """
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raw = data if isinstance(data, dict) else {"body": data}
        raise ProviderError("malformed answer: machine without an id", provider="fly", raw=raw)
    return data


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = [
    "DEFAULT_WAIT_TIMEOUT_S",
    "MAX_WAIT_S",
    "create",
    "create_app",
    "destroy",
    "filter_computes",
    "find_by_name",
    "get",
    "list_machines",
    "start",
    "stop",
    "wait_for_state",
]
