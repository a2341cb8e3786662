"""RunPod's legacy GraphQL API (``https://api.runpod.io/graphql``), pricing catalog only.

Served at ``POST /runpod/graphql``. The key may come as ``Authorization: Bearer`` or
``?api_key=``. This is no GraphQL engine: a query mentioning ``gpuTypes`` gets the whole
catalog (every field, requested or not), optionally filtered by
``gpuTypes(input: {id: "..."})``; anything else gets a GraphQL ``errors`` array with
HTTP 200, as GraphQL servers answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.catalog import GPUS, FakeGpu
from atlas_tasks.testing.fakecloud.common import FakeCloudContext, provider_route

GRAPHQL_PREFIX = "/runpod"

_ID_LITERAL = re.compile(r'gpuTypes\s*\(\s*input\s*:\s*\{[^}]*\bid\s*:\s*"([^"]*)"')
_ID_VARIABLE = re.compile(r"gpuTypes\s*\(\s*input\s*:\s*\{[^}]*\bid\s*:\s*\$(\w+)")
_FIELD = re.compile(r"\{\s*(\w+)")


def gpu_type_json(gpu: FakeGpu) -> dict[str, Any]:
    """One ``GpuType`` with every field ExAtlas and runpod-python ask for."""
    return {
        "id": gpu.id,
        "displayName": gpu.display_name,
        "memoryInGb": gpu.memory_gb,
        "manufacturer": gpu.manufacturer,
        "maxGpuCount": gpu.max_gpu_count,
        "secureCloud": gpu.secure_cloud,
        "communityCloud": gpu.community_cloud,
        "securePrice": gpu.secure_price,
        "communityPrice": gpu.community_price,
        "secureSpotPrice": gpu.secure_spot_price,
        "communitySpotPrice": gpu.community_spot_price,
        "oneWeekPrice": round(gpu.lowest_price * 0.95, 3),
        "oneMonthPrice": round(gpu.lowest_price * 0.9, 3),
        "threeMonthPrice": round(gpu.lowest_price * 0.85, 3),
        "lowestPrice": {
            "minimumBidPrice": gpu.lowest_spot,
            "uninterruptablePrice": gpu.lowest_price,
            # The docs put stockStatus here (High/Medium/Low/None) ...
            "stockStatus": gpu.stock,
            "availableGpuCounts": [] if gpu.stock == "None" else [1, 2, 4, 8],
        },
        # ... ExAtlas asks for it on GpuType itself; answer both.
        "stockStatus": gpu.stock,
    }


def _errors(message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message}]}, status_code=200)


def answer(body: Any) -> JSONResponse:
    """The GraphQL response for a decoded request body."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _errors('request must be a JSON object with a "query" string')
    query: str = body["query"]
    variables = body.get("variables") or {}
    if not isinstance(variables, dict):
        return _errors("variables must be an object")
    if query.count("{") != query.count("}") or "{" not in query:
        return _errors("Syntax Error: malformed query (unbalanced braces)")
    if query.lstrip().startswith("mutation"):
        return _errors("the fake cloud implements no GraphQL mutations")
    if "gpuTypes" not in query:
        match = _FIELD.search(query)
        field = match.group(1) if match else "?"
        return _errors(f'Cannot query field "{field}" on type "Query".')
    wanted: str | None = None
    literal = _ID_LITERAL.search(query)
    if literal:
        wanted = literal.group(1)
    else:
        var = _ID_VARIABLE.search(query)
        if var:
            value = variables.get(var.group(1))
            wanted = value if isinstance(value, str) else None
    gpus = [gpu_type_json(g) for g in GPUS if wanted is None or g.id == wanted]
    return JSONResponse({"data": {"gpuTypes": gpus}})


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """The GraphQL route, bound to ``ctx``."""

    async def graphql(request: Request) -> Response:
        with ctx.state.lock:
            ctx.state.totals["graphql_calls"] += 1
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            return _errors("Syntax Error: request body is not valid JSON")
        return answer(body)

    return [provider_route(ctx, "graphql", GRAPHQL_PREFIX, "/graphql", ["POST"], graphql)]
