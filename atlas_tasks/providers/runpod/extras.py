"""RunPod-only REST v2 resources: templates, network volumes, serverless endpoints, billing
and the GPU catalog.

These (the catalog aside) have no place in the cross-cloud contract, so they are plain
functions returning RunPod's own JSON objects (exposed as extra methods on
``RunPodProvider``). Paths, list wrappers and statuses follow the v2 definition:

==================  ========================  ==================
kind                collection                list wrapper
==================  ========================  ==================
``template``        ``/v2/templates``         ``templates``
``network_volume``  ``/v2/network-volumes``   ``networkVolumes``
``endpoint``        ``/v2/serverless``        ``endpoints``
==================  ========================  ==================

Creates answer 201 and are sent ``idempotent=False`` (a blind retry could make a second
template/volume/endpoint); deletes answer 204 and 404 raises ``NotFoundError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from atlas_tasks.errors import validation_error
from atlas_tasks.providers.http import HttpClient
from atlas_tasks.providers.runpod import translate
from atlas_tasks.providers.translate_common import drop_none, malformed, object_with_id
from atlas_tasks.specs import GpuType

#: Collection path and list wrapper key by resource kind.
RESOURCES: dict[str, tuple[str, str]] = {
    "template": ("/v2/templates", "templates"),
    "network_volume": ("/v2/network-volumes", "networkVolumes"),
    "endpoint": ("/v2/serverless", "endpoints"),
}

#: GPU catalog path.
CATALOG_GPUS = "/v2/catalog/gpus"

#: Per-pod billing history path.
BILLING_PODS = "/v2/billing/pods"


def _item_path(kind: str, item_id: str) -> str:
    if not isinstance(item_id, str) or not item_id.strip():
        raise validation_error(f"{kind}_id", "must be a non-empty string", provider="runpod")
    return f"{RESOURCES[kind][0]}/{quote(item_id.strip(), safe='')}"


def list_items(
    api: HttpClient, kind: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """``GET <collection>``: the objects under the kind's list wrapper.

    Raises:
        ProviderError: the answer is not ``{"<wrapper>": [objects]}``.
    """
    path, key = RESOURCES[kind]
    return translate.wrapped_list(api.call("GET", path, params=params).data, key, kind)


def get_item(api: HttpClient, kind: str, item_id: str) -> dict[str, Any]:
    """``GET <collection>/{id}``; 404 raises ``NotFoundError``."""
    return object_with_id("runpod", api.call("GET", _item_path(kind, item_id)).data, kind)[0]


def create_item(api: HttpClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST <collection>`` (201; 200 accepted); ``None`` values dropped."""
    answer = api.call(
        "POST", RESOURCES[kind][0], json=drop_none(body), expect=(201, 200), idempotent=False
    )
    return object_with_id("runpod", answer.data, kind)[0]


def delete_item(api: HttpClient, kind: str, item_id: str) -> None:
    """``DELETE <collection>/{id}`` (204; 200 accepted)."""
    api.call("DELETE", _item_path(kind, item_id), expect=(204, 200))


def list_gpu_types(api: HttpClient) -> list[GpuType]:
    """``GET /v2/catalog/gpus`` with pod availability: prices per cloud and stock."""
    answer = api.call("GET", CATALOG_GPUS, params=translate.CATALOG_PARAMS)
    return translate.gpu_types_from_catalog(answer.data)


def pod_billing(api: HttpClient, params: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/billing/pods``: ``{"records": [...], "metadata": {...}}`` as RunPod sends it.

    Raises:
        ProviderError: the answer has no ``records`` array.
    """
    body = api.call("GET", BILLING_PODS, params=params).data
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise malformed("runpod", "pod billing answer has no records array", body)
    return body


__all__ = [
    "BILLING_PODS",
    "CATALOG_GPUS",
    "RESOURCES",
    "create_item",
    "delete_item",
    "get_item",
    "list_gpu_types",
    "list_items",
    "pod_billing",
]
