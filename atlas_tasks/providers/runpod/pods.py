"""RunPod pods over REST v2: create (duplicate-safe), get, list, stop, start, terminate.

Statuses follow the v2 definition: ``POST /v2/pods`` answers 201 with the pod,
``POST /v2/pods/{id}/action`` 200 with the pod (204 for ``terminate``),
``DELETE /v2/pods/{id}`` 204. Errors are RFC 9457 problems (mapped by the HTTP layer).

Terminate: 404 raises ``NotFoundError`` (the orchestrator counts it as done); a 409 (a
cluster member pod, which must be deleted through its cluster) stays a ``ProviderError``.

Stop and start are retried like any idempotent call. v2 answers **409** when the action
is not valid for the pod's status, which is also what the retry of a stop whose first
answer was lost gets; so a 409 is settled by reading the pod: already in the wanted state
→ done, otherwise the 409 is raised.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from atlas_tasks.errors import AtlasError, validation_error
from atlas_tasks.providers.base import filter_computes
from atlas_tasks.providers.http import HttpClient, create_once
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import Compute, ComputeRequest, ComputeStatus

#: Collection path of pods.
PODS = "/v2/pods"

#: Statuses that mean an action already had its effect (see the module docstring).
_SETTLED: dict[str, frozenset[ComputeStatus]] = {
    "stop": frozenset({ComputeStatus.STOPPED}),
    "start": frozenset({ComputeStatus.RUNNING, ComputeStatus.PROVISIONING}),
}


def pod_path(pod_id: str, suffix: str = "") -> str:
    """``/v2/pods/<id><suffix>`` with the id checked and percent-encoded.

    Raises:
        ValidationError: field ``compute_id`` when the id is empty or not a string.
    """
    if not isinstance(pod_id, str) or not pod_id.strip():
        raise validation_error("compute_id", "must be a non-empty string", provider="runpod")
    return f"{PODS}/{quote(pod_id.strip(), safe='')}{suffix}"


def create(
    api: HttpClient,
    request: ComputeRequest,
    *,
    find_by_name: Callable[[str], Compute | None],
    max_retries: int,
) -> Compute:
    """Create a pod so that exactly one results, even when RunPod fails the answer.

    ``POST /v2/pods`` is sent with ``idempotent=False``: the HTTP layer retries only 429
    and connect failures. After a failure that may have created the pod (5xx, read
    timeout, reset), we wait one backoff, then look the pod up by its name: found → return
    it; not found → create again, at most ``max_retries`` more times. v2 requires a name,
    so a request without one gets a generated name (:func:`translate.default_pod_name`)
    that the lookup then uses. The loop is :func:`atlas_tasks.providers.http.create_once`.

    Raises:
        ValidationError: bad request fields (see :func:`translate.pod_create_body`).
        AtlasError: the final failure.
    """
    body = translate.pod_create_body(request)

    def post() -> Compute:
        answer = api.call("POST", PODS, json=body, expect=(201, 200), idempotent=False)
        return translate.pod_to_compute(answer.data)

    return create_once(
        post,
        name=body["name"],
        find_by_name=find_by_name,
        max_retries=max_retries,
        sleep=api.sleep,
        backoff=api.backoff_delay,
        label="runpod",
        kind="pod",
    )


def get(api: HttpClient, pod_id: str) -> Compute:
    """``GET /v2/pods/{id}``; 404 raises ``NotFoundError``."""
    return translate.pod_to_compute(api.call("GET", pod_path(pod_id)).data)


def list_pods(
    api: HttpClient,
    *,
    status: ComputeStatus | None = None,
    name: str | None = None,
    region: str | None = None,
    gpu: str | None = None,
) -> list[Compute]:
    """``GET /v2/pods``, filtered client-side: v2 declares no status or name query
    parameters (only ``includeClusterPods``, left at its default)."""
    answer = api.call("GET", PODS)
    computes = [translate.pod_to_compute(item) for item in translate.pods_from_list(answer.data)]
    return filter_computes(computes, status=status, name=name, region=region, gpu=gpu)


def find_by_name(api: HttpClient, name: str) -> Compute | None:
    """The not-terminated pod named exactly ``name`` (a running one preferred), or None."""
    live = [c for c in list_pods(api, name=name) if c.status != ComputeStatus.TERMINATED]
    live.sort(key=lambda c: c.status != ComputeStatus.RUNNING)
    return live[0] if live else None


def action(api: HttpClient, pod_id: str, verb: str) -> None:
    """``POST /v2/pods/{id}/action`` with ``{"action": verb}`` (200, or 204).

    A 409 for ``stop``/``start`` is settled by reading the pod (module docstring).

    Raises:
        NotFoundError: unknown pod.
        AtlasError: any other failure, including a 409 the pod's state does not explain.
    """
    path = pod_path(pod_id, "/action")
    try:
        api.call("POST", path, json={"action": verb}, expect=(200, 204), idempotent=True)
    except AtlasError as err:
        settled = _SETTLED.get(verb)
        if err.status != 409 or settled is None:
            raise
        if get(api, pod_id).status not in settled:
            raise
        # Already stopped/started: the effect the caller wants is there.


def stop(api: HttpClient, pod_id: str) -> None:
    """Stop a pod (keeps its disk): the ``stop`` action. Safe to retry."""
    action(api, pod_id, "stop")


def start(api: HttpClient, pod_id: str) -> None:
    """Start a stopped pod: the ``start`` action. Safe to retry."""
    action(api, pod_id, "start")


def terminate(api: HttpClient, pod_id: str) -> None:
    """``DELETE /v2/pods/{id}`` (204; 200 accepted); 404 raises ``NotFoundError``."""
    api.call("DELETE", pod_path(pod_id), expect=(204, 200))


__all__ = [
    "PODS",
    "action",
    "create",
    "find_by_name",
    "get",
    "list_pods",
    "pod_path",
    "start",
    "stop",
    "terminate",
]
