"""RunPod-only REST v1 resources: templates, network volumes and serverless endpoints.

These have no place in the cross-cloud contract, so they are plain functions returning
RunPod's own JSON objects (exposed as extra methods on ``RunPodProvider``). Creates answer
**200** per the v1 spec (ExAtlas demanded 201, §9.3); both are accepted. Creates are sent
``idempotent=False`` (a blind retry could make a second template/volume/endpoint); deletes
answer 204 (200 accepted) and 404 raises ``NotFoundError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from atlas_tasks.errors import ProviderError, validation_error
from atlas_tasks.providers.http import HttpClient
from atlas_tasks.providers.translate_common import drop_none

#: Collection paths by resource kind.
RESOURCES: dict[str, str] = {
    "template": "/templates",
    "network_volume": "/networkvolumes",
    "endpoint": "/endpoints",
}


def _item_path(kind: str, item_id: str) -> str:
    if not isinstance(item_id, str) or not item_id.strip():
        raise validation_error(f"{kind}_id", "must be a non-empty string", provider="runpod")
    return f"{RESOURCES[kind]}/{quote(item_id.strip(), safe='')}"


def _object(data: Any, kind: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not data.get("id"):
        raise ProviderError(f"malformed answer: {kind} without an id", provider="runpod",
                            raw=data if isinstance(data, dict) else {"body": data})
    return data


def list_items(api: HttpClient, kind: str, params: dict[str, Any] | None = None
               ) -> list[dict[str, Any]]:
    """``GET /<kind>s``: the bare array RunPod returns (``data`` wrapper tolerated)."""
    data = api.call("GET", RESOURCES[kind], params=params).data
    if isinstance(data, dict):
        data = data.get("data", data.get(f"{kind}s"))
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
        raise ProviderError(f"malformed answer: {kind} list is not an array of objects",
                            provider="runpod", raw={"body": data})
    return data


def get_item(api: HttpClient, kind: str, item_id: str) -> dict[str, Any]:
    """``GET /<kind>s/{id}``."""
    return _object(api.call("GET", _item_path(kind, item_id)).data, kind)


def create_item(api: HttpClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /<kind>s`` (200 per spec, 201 accepted); ``None`` values dropped."""
    payload = drop_none(body)
    answer = api.call("POST", RESOURCES[kind], json=payload, expect=(200, 201),
                      idempotent=False)
    return _object(answer.data, kind)


def delete_item(api: HttpClient, kind: str, item_id: str) -> None:
    """``DELETE /<kind>s/{id}`` (204; 200 accepted)."""
    api.call("DELETE", _item_path(kind, item_id), expect=(204, 200))


__all__ = ["RESOURCES", "create_item", "delete_item", "get_item", "list_items"]
