"""RunPod's legacy GraphQL API, used only for the GPU price catalog.

Queries are read-only, so they are sent ``idempotent=True`` and retried like GETs.
An HTTP 200 whose body has a non-empty ``errors`` list is a failure (GraphQL reports errors
in-band): it raises ``ProviderError`` with ``status=200`` and the first error's message.
"""

from __future__ import annotations

from typing import Any

from atlas_tasks.errors import ProviderError, extract_message
from atlas_tasks.providers.http import HttpClient
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import GpuType


def query(api: HttpClient, text: str, variables: dict[str, Any] | None = None) -> Any:
    """Run a GraphQL query and return its ``data``.

    Raises:
        ProviderError: in-band ``errors``, or an answer without ``data``.
        AtlasError: HTTP and transport failures, as mapped by the HTTP layer.
    """
    answer = api.call("POST", "", json={"query": text, "variables": variables or {}},
                      idempotent=True)
    body = answer.data
    if not isinstance(body, dict):
        raise ProviderError("malformed GraphQL answer: not a JSON object", provider="runpod",
                            status=answer.status, raw={"body": body})
    errors = body.get("errors")
    if errors:
        message = extract_message({"errors": errors}) if isinstance(errors, list) else None
        raise ProviderError(message or "GraphQL error", provider="runpod",
                            status=answer.status, raw=body)
    if "data" not in body or body["data"] is None:
        raise ProviderError("malformed GraphQL answer: no data", provider="runpod",
                            status=answer.status, raw=body)
    return body["data"]


def list_gpu_types(api: HttpClient) -> list[GpuType]:
    """The catalog with on-demand/spot prices and stock for one GPU."""
    return translate.gpu_types_from_data(query(api, translate.GPU_TYPES_QUERY))


__all__ = ["list_gpu_types", "query"]
