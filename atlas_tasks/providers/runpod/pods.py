"""RunPod pods over REST v1: create (duplicate-safe), get, list, stop, start, terminate.

Expected statuses follow the v1 spec (reference notes §1.1): ``POST /pods`` answers 201
(200 accepted too), ``DELETE /pods/{id}`` answers 204 (200 accepted too).

Terminate: 404 raises ``NotFoundError`` (the orchestrator counts it as done). RunPod may
also answer **400 "Invalid Pod ID."**; that stays a ``ProviderError``, because a 400 can
equally mean a malformed id we sent, and treating it as "already gone" could hide a pod
that still bills. Callers that know the id came from RunPod may decide otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.base import filter_computes
from atlas_tasks.providers.http import HttpClient, create_once
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import Compute, ComputeRequest, ComputeStatus


def pod_path(pod_id: str, suffix: str = "") -> str:
    """``/pods/<id><suffix>`` with the id checked and percent-encoded.

    Raises:
        ValidationError: field ``compute_id`` when the id is empty or not a string.
    """
    if not isinstance(pod_id, str) or not pod_id.strip():
        raise validation_error("compute_id", "must be a non-empty string", provider="runpod")
    return f"/pods/{quote(pod_id.strip(), safe='')}{suffix}"


def create(
    api: HttpClient,
    request: ComputeRequest,
    *,
    find_by_name: Callable[[str], Compute | None],
    max_retries: int,
) -> Compute:
    """Create a pod so that exactly one results, even when RunPod fails the answer.

    ``POST /pods`` is sent with ``idempotent=False``: the HTTP layer retries only 429 and
    connect failures. After a failure that may have created the pod (5xx, read timeout,
    reset), we wait one backoff, then look the pod up by ``request.name``: found → return
    it; not found → create again, at most ``max_retries`` more times. Without a name no
    lookup is possible, so the error is raised (still flagged ``maybe_created``) rather
    than risking a second pod; the orchestrator always sets a name. The loop is
    :func:`atlas_tasks.providers.http.create_once`.

    Raises:
        ValidationError: bad request fields (see :func:`translate.pod_create_body`).
        AtlasError: the final failure.
    """
    body = translate.pod_create_body(request)

    def post() -> Compute:
        answer = api.call("POST", "/pods", json=body, expect=(201, 200), idempotent=False)
        return translate.pod_to_compute(answer.data)

    return create_once(post, name=request.name, find_by_name=find_by_name,
                       max_retries=max_retries, sleep=api.sleep, backoff=api.backoff_delay,
                       label="runpod", kind="pod")


def get(api: HttpClient, pod_id: str) -> Compute:
    """``GET /pods/{id}``; 404 raises ``NotFoundError``."""
    return translate.pod_to_compute(api.call("GET", pod_path(pod_id)).data)


def list_pods(
    api: HttpClient,
    *,
    status: ComputeStatus | None = None,
    name: str | None = None,
    region: str | None = None,
    gpu: str | None = None,
) -> list[Compute]:
    """``GET /pods`` with ``desiredStatus``/``name`` sent as query parameters, then every
    filter applied again client-side (exact name, status, region, canonical GPU)."""
    answer = api.call("GET", "/pods", params=translate.list_params(status, name))
    computes = [translate.pod_to_compute(item) for item in translate.pods_from_list(answer.data)]
    return filter_computes(computes, status=status, name=name, region=region, gpu=gpu)


def find_by_name(api: HttpClient, name: str) -> Compute | None:
    """The not-terminated pod named exactly ``name`` (a running one preferred), or None."""
    live = [c for c in list_pods(api, name=name) if c.status != ComputeStatus.TERMINATED]
    live.sort(key=lambda c: c.status != ComputeStatus.RUNNING)
    return live[0] if live else None


def stop(api: HttpClient, pod_id: str) -> None:
    """``POST /pods/{id}/stop`` (keeps the volume). Safe to retry."""
    api.call("POST", pod_path(pod_id, "/stop"), expect=(200, 201, 204), idempotent=True)


def start(api: HttpClient, pod_id: str) -> None:
    """``POST /pods/{id}/start``. Safe to retry."""
    api.call("POST", pod_path(pod_id, "/start"), expect=(200, 201, 204), idempotent=True)


def terminate(api: HttpClient, pod_id: str) -> None:
    """``DELETE /pods/{id}`` (204; 200 accepted); 404 raises ``NotFoundError``."""
    api.call("DELETE", pod_path(pod_id), expect=(204, 200))


__all__ = ["create", "find_by_name", "get", "list_pods", "pod_path", "start", "stop", "terminate"]
